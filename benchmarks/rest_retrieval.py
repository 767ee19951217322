"""REST datastore build rate and retrieval time per step, against one target forward.

A corpus of generated "text" (phrases drawn from a Zipf-like vocabulary, so n-grams repeat as in
real conversations) of --tokens tokens is indexed; then retrieval (longest context match +
continuations + trie tree, exactly what a REST step runs) is timed on contexts cut from the
corpus and on fresh random contexts, each followed by a one-token decoding forward of a model
shaped like the built-in one (context 200), so both are timed side by side under the same load.
Reported twice, with the retriever's memo empty and after --warm other retrievals: medians for
steps with and without a match, and the mean per step, each as a share of the median forward.

    .venv/bin/python benchmarks/rest_retrieval.py [--tokens 10000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from specbench_cli.drafters.datastore import SEPARATOR, TOKENS, Datastore, index_tokens
from specbench_cli.methods.rest import REST
from specbench_cli.engine import Engine, EngineConfig


def corpus(n: int, vocab: int, seed: int) -> np.ndarray:
    """Turns of 50-400 tokens built from 20k recurring phrases of 3-12 Zipf-distributed tokens."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
    weights /= weights.sum()
    phrases = [rng.choice(vocab, size=rng.integers(3, 13), p=weights).astype(np.uint32)
               for _ in range(20_000)]
    phrase_p = 1.0 / np.arange(1, len(phrases) + 1) ** 0.9
    phrase_p /= phrase_p.sum()
    out, size = [], 0
    while size < n:
        picks = rng.choice(len(phrases), size=rng.integers(8, 40), p=phrase_p)
        turn = np.concatenate([phrases[i] for i in picks] + [np.array([SEPARATOR], np.uint32)])
        out.append(turn)
        size += turn.size
    return np.concatenate(out)[:n]


def builtin_shaped_engine() -> Engine:
    from specbench_cli.models.builtin.recipe import Recipe
    r = Recipe()
    cfg = EngineConfig.from_hf({
        "model_type": "llama", "vocab_size": r.vocab_size, "hidden_size": r.hidden_size,
        "intermediate_size": r.intermediate_size, "num_hidden_layers": r.num_layers,
        "num_attention_heads": r.num_heads})
    return Engine(cfg).eval()


def contexts_from(tokens: np.ndarray, n: int, rng) -> list[list[int]]:
    """Half cut from the corpus (hits, large trees), half fresh random ones (few or no hits)."""
    out = []
    for i in range(n):
        if i % 2:
            at = int(rng.integers(100, tokens.size - 100))
            out.append(tokens[at - 40:at].tolist())
        else:
            out.append(rng.integers(0, 3000, size=40).tolist())
    return out


def side_by_side(rest: REST, engine: Engine, contexts: list[list[int]]):
    """Each retrieval followed by one one-token forward: (retrieval s, hit?, forward s) lists."""
    cache = engine.cache(256)
    ids = torch.randint(0, engine.config.vocab_size, (1, 200))
    times, hits, forward = [], [], []
    with torch.inference_mode():
        engine(ids, cache, 0)
        for ctx in contexts:
            t = time.perf_counter()
            hits.append(rest.retrieve(ctx) is not None)
            times.append(time.perf_counter() - t)
            cache.truncate(200)
            t = time.perf_counter()
            engine(ids[:, -1:], cache, 200)
            forward.append(time.perf_counter() - t)
    return times, hits, forward


def report(label: str, times: list[float], hits: list[bool], forward: list[float]):
    f_ms = statistics.median(forward) * 1e3
    print(f"{label}: one target forward median {f_ms:.3f} ms")
    for kind, want in (("with a match", True), ("without", False)):
        group = [t for t, h in zip(times, hits) if h == want]
        if group:
            ms = statistics.median(group) * 1e3
            print(f"  retrieval, {len(group)} steps {kind}: median {ms:.3f} ms = "
                  f"{ms / f_ms:.3f} of a forward")
    # The mean, not the median: the two kinds of steps differ ten-fold, and a REST step's cost
    # is what it pays on average.
    mean_ms = statistics.fmean(times) * 1e3
    print(f"  retrieval per step, mean over {len(times)}: {mean_ms:.3f} ms = "
          f"{mean_ms / f_ms:.3f} of a forward (goal < 0.10)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warm", type=int, default=3000,
                        help="untimed retrievals on other contexts before the warm pass")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp()) / "ds"
    folder.mkdir()
    tokens = corpus(args.tokens, 3000, 0)
    tokens.tofile(folder / TOKENS)
    start = time.perf_counter()
    manifest = index_tokens(folder, {"tokenizer": "synthetic", "vocab_hash": "-"}, start)
    store = Datastore(folder)
    engine = builtin_shaped_engine()
    rest = REST(engine, set(), datastore=store)
    rng = np.random.default_rng(1)
    print(f"datastore: {manifest['tokens']:,} tokens, {manifest['bytes'] / 2**20:.1f} MiB; "
          f"suffix array built at {manifest['tokens_per_second']:,.0f} tokens/s "
          f"({manifest['build_seconds']:.1f} s)")
    print(f"target: built-in-shaped model, {engine.num_parameters() / 1e6:.1f}M params, fp32 "
          f"cpu, {torch.get_num_threads()} threads, context 200")
    report("cold (empty memo)", *side_by_side(rest, engine, contexts_from(tokens, args.steps, rng)))
    # A run's retriever has seen many steps: its memo of frequent contexts is filled.
    for ctx in contexts_from(tokens, args.warm, rng):
        rest.retrieve(ctx)
    report(f"warm (after {args.warm} other retrievals)",
           *side_by_side(rest, engine, contexts_from(tokens, args.steps, rng)))


if __name__ == "__main__":
    main()
