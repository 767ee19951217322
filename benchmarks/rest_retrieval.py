"""REST datastore build rate and retrieval time per step, against one target forward.

A corpus of generated "text" (phrases drawn from a Zipf-like vocabulary, so n-grams repeat as in
real conversations) of --tokens tokens is indexed; then retrieval (longest context match +
continuations + trie tree, exactly what a REST step runs) is timed on contexts cut from the
corpus and on fresh random contexts, each followed by a one-token decoding forward of a model
shaped like the built-in one (context 200), so both are timed side by side under the same load;
the report is the ratio of their medians.

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

from specbench_cli.datastore import SEPARATOR, TOKENS, Datastore, index_tokens
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
    from specbench_cli.builtin.recipe import Recipe
    r = Recipe()
    cfg = EngineConfig.from_hf({
        "model_type": "llama", "vocab_size": r.vocab_size, "hidden_size": r.hidden_size,
        "intermediate_size": r.intermediate_size, "num_hidden_layers": r.num_layers,
        "num_attention_heads": r.num_heads})
    return Engine(cfg).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=300)
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
    contexts = []
    for i in range(args.steps):
        if i % 2:        # a context seen in the corpus (hits, large trees)
            at = int(rng.integers(100, args.tokens - 100))
            contexts.append(tokens[at - 40:at].tolist())
        else:            # a fresh context (few or no hits)
            contexts.append(rng.integers(0, 3000, size=40).tolist())
    cache = engine.cache(256)
    ids = torch.randint(0, engine.config.vocab_size, (1, 200))
    times, hit_times, forward = [], [], []
    with torch.inference_mode():
        engine(ids, cache, 0)
        for ctx in contexts:       # side by side: one retrieval, then one forward, in turn
            t = time.perf_counter()
            found = rest.retrieve(ctx)
            times.append(time.perf_counter() - t)
            if found is not None:
                hit_times.append(times[-1])
            cache.truncate(200)
            t = time.perf_counter()
            engine(ids[:, -1:], cache, 200)
            forward.append(time.perf_counter() - t)
    f_ms = statistics.median(forward) * 1e3
    mean_ms = statistics.fmean(times) * 1e3
    miss_times = [t for t in times if t not in hit_times]
    print(f"datastore: {manifest['tokens']:,} tokens, {manifest['bytes'] / 2**20:.1f} MiB; "
          f"suffix array built at {manifest['tokens_per_second']:,.0f} tokens/s "
          f"({manifest['build_seconds']:.1f} s)")
    print(f"one target forward (built-in-shaped model, {engine.num_parameters() / 1e6:.1f}M "
          f"params, fp32 cpu, {torch.get_num_threads()} threads, context 200): median "
          f"{f_ms:.3f} ms")
    for label, group in ((f"{len(hit_times)} steps with a match", hit_times),
                         (f"{len(miss_times)} steps without", miss_times)):
        if group:
            ms = statistics.median(group) * 1e3
            print(f"retrieval, {label}: median {ms:.3f} ms = {ms / f_ms:.3f} of a forward")
    # The mean, not the median: the two kinds of steps differ ten-fold, and a REST step's cost
    # is what it pays on average.
    print(f"retrieval per step, mean over all {args.steps}: {mean_ms:.3f} ms = "
          f"{mean_ms / f_ms:.3f} of a forward (goal < 0.10)")


if __name__ == "__main__":
    main()
