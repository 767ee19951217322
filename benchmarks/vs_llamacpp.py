"""specbench's vanilla and prompt lookup against llama.cpp, the peer a CPU user would pick, side by
side on one machine and one GGUF file.

1. llama.cpp's `llama-bench` and `llama-lookup` (and `llama-server`, for endpoint rows) are built
   by specbench_cli/llamacpp.py from the source vendored in the package index's
   `llama-cpp-python` sdist (or taken from `--llamacpp DIR`), cached under $SPECBENCH_HOME.
2. Decode: llama.cpp's `tg` rate (tokens/s after a prompt of each context) against our vanilla
   one-token step at the same context (median of repeats), and block rates: llama.cpp's `pp-n`
   (n tokens in one batch) against our n-token forward; on the quantized GGUF and on f32 and bf16
   GGUFs of its own dequantized tensors (the very weights our engine loads: the same bytes).
3. Speculation: llama.cpp's plain decode at each question's context and its prompt-lookup
   decoding (`llama-lookup`, greedy) against our vanilla and every method that needs no trained
   add-on (PLD, LLMA, Lookahead, Token Recycling) on the same official questions (`--bench`,
   `--limit`), all timed the way llama-lookup times itself (decoding after the prompt's
   forward), in rounds; the fastest of ours that stayed exact against llama.cpp's plain decode;
   and how many of our vanilla's tokens llama.cpp writes too on the same bytes.

Optional: when the build is impossible (no compiler, no cmake, no network to the index) it says
what is missing and exits 0. Never part of the unit tests.

    .venv/bin/python benchmarks/vs_llamacpp.py [--bench question.jsonl --limit 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
from pathlib import Path

from specbench_cli.engine.kernels import cpu_name
from specbench_cli.llamacpp import build_llamacpp, cache_root, same_bytes_gguf


def say(text: str):
    print(text, flush=True)

def llama_bench(tools: Path, gguf: Path, threads: int, depth: int, n: int,
                decode_tokens: int = 32, runs: int = 3) -> float:
    """llama.cpp's rate in tokens/s (the mean of `runs`): decode (`tg`, one token a forward,
    `decode_tokens` of them) when n == 1, else a block of n tokens in one batch (`pp n`), both
    after `depth` tokens of context (prefilled untimed)."""
    test = ["-p", "0", "-n", str(decode_tokens)] if n == 1 else ["-p", str(n), "-n", "0"]
    out = subprocess.run([str(tools / "llama-bench"), "-m", str(gguf), "-t", str(threads),
                          "-d", str(depth), "-r", str(runs), "-o", "json", *test],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)[0]["avg_ts"])


def llama_lookup(tools: Path, gguf: Path, threads: int, prompt: str, n: int) -> dict:
    """llama.cpp's prompt-lookup decoding, greedy: the text it wrote after the prompt, and its
    decode rate (llama-lookup times decoding after the prompt's forward) and draft acceptance."""
    out = subprocess.run([str(tools / "llama-lookup"), "-m", str(gguf), "-t", str(threads),
                          "-p", prompt, "-n", str(n), "--temp", "0", "--spec-draft-n-max", "10",
                          "--no-escape"], capture_output=True, text=True)
    log = out.stdout + out.stderr
    decoded = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
    if out.returncode != 0 or decoded is None:
        raise RuntimeError(f"llama-lookup failed: {log.strip().splitlines()[-1:]}")
    numbers = {k: int(v) for k, v in re.findall(r"(n_drafted|n_accept)\s+=\s+(\d+)", log)}
    text = out.stdout.split(prompt, 1)[-1]          # it echoes the prompt first
    return {"tokens": int(decoded[1]), "seconds": float(decoded[2]), "text": text, **numbers}


def agreeing_tokens(tokenizer, tokens: list[int], text: str) -> int:
    """How many of our first tokens llama.cpp's text starts with (a prefix that ends inside a
    multi-byte character is skipped, not counted as a difference)."""
    agree = 0
    for k in range(1, len(tokens) + 1):
        piece = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        if piece.endswith("\ufffd"):
            continue
        if not text.startswith(piece):
            break
        agree = k
    return agree


def ours(folder: Path, dtype: str, depth: int, sizes, repeats: int) -> dict:
    """Our engine's rates in tokens/s at the same context: n / the n-token forward's median."""
    from specbench_cli.engine.load import load_engine
    from specbench_cli.engine.timing import block_latency
    engine, _, _ = load_engine(str(folder), dtype=dtype, device="cpu", with_tokenizer=False)
    return {n: n / block_latency(engine, n, depth, repeats) for n in sizes}


def decode_table(tools, ggufs: dict, folder: Path, threads: int, depth: int, sizes,
                 repeats: int):
    say(f"\n## decode and blocks at a {depth}-token context, {threads} threads "
        "(tokens/s; llama-bench -r 3 averages, ours medians of forwards)")
    say(f"{'engine / weights':<34}" + "".join(f"{'tg' if n == 1 else f'pp{n}':>9}" for n in sizes))
    rows = {}
    for label, gguf in ggufs.items():
        rows[f"llama.cpp {label}"] = {n: llama_bench(tools, gguf, threads, depth, n) for n in sizes}
    for dtype in ("fp32", "bf16"):
        rows[f"specbench {dtype}"] = ours(folder, dtype, depth, sizes, repeats)
    for label, rates in rows.items():
        say(f"{label:<34}" + "".join(f"{rates[n]:9.1f}" for n in sizes))
    quant = rows[f"llama.cpp {next(iter(ggufs))}"][1]
    for dtype in ("fp32", "bf16"):
        mine = rows[f"specbench {dtype}"][1]
        line = f"specbench {dtype} decode ÷ llama.cpp {next(iter(ggufs))}: {mine / quant:.2f}×"
        same = rows.get(f"llama.cpp {dtype.replace('fp32', 'f32')}")
        if same:
            line += f"; ÷ llama.cpp on the same {dtype} bytes: {mine / same[1]:.2f}×"
        say(line)
    return rows


FREE_METHODS = ("pld", "llma", "lookahead", "recycling")    # lossless, no trained add-on


def decode_rate(method, ids: list[int], max_new: int) -> tuple[float, list[int]]:
    """Our decode rate in tokens/s, timed as llama-lookup times its own: the tokens over the
    seconds after the prompt's forward (the prefill phase, timed apart, is left out)."""
    import time

    import torch

    from specbench_cli.methods.base import Decoding
    from specbench_cli.methods.verify import Phases
    with torch.inference_mode():
        method.generate(ids[:64], 8)                 # warm-up (caches, first-call costs)
        phases = Phases(method.engine.device)
        start = time.perf_counter()
        gen = method.generate(ids, max_new, Decoding(phases=phases))
        seconds = time.perf_counter() - start - phases.seconds["prefill"]
    return len(gen.tokens) / seconds, gen.tokens


def lookup_table(tools, ggufs: dict, folder: Path, threads: int, bench: Path, limit: int,
                 max_new: int, rounds: int):
    """On the first `limit` questions of each of two long-input subtasks (summarization, RAG:
    where lookup has something to copy): llama.cpp's plain decode at the question's context and
    its prompt lookup, both on the quantized file, against our vanilla and add-on-free methods,
    each timed once a round, in turn (a shared host's speed drifts within minutes: each ratio is
    taken within a round, then the median over rounds); then how our fastest exact method
    compares with llama.cpp's plain decode, and how far our vanilla's tokens agree with
    llama.cpp's on the same bytes."""
    from specbench_cli.bench.prompts import build_prompt_ids
    from specbench_cli.bench.questions import load_questions, select
    from specbench_cli.engine.load import DTYPE_NAMES, load_engine
    from specbench_cli.methods import METHODS
    from specbench_cli.run.runner import eos_token_ids
    engine, tokenizer, _ = load_engine(str(folder), device="cpu")
    dtype = DTYPE_NAMES[engine.dtype]
    twin = ggufs["f32" if dtype == "fp32" else dtype]
    eos = eos_token_ids(engine, tokenizer)
    questions = select(load_questions(bench), ["summarization", "rag"], limit)
    names = ("vanilla",) + FREE_METHODS
    say(f"\n## speculation on {len(questions)} official questions (summarization, RAG), greedy, "
        f"≤{max_new} new tokens; llama.cpp on Q4_1, specbench in {dtype} ({engine.dtype_choice})")
    say(f"decode tokens/s (tokens over the seconds after the prompt's forward, on both sides), "
        f"medians of {rounds} rounds")
    say(f"{'question':<10}{'context':>8}{'llama.cpp':>10}{'lookup':>8}{'accept':>7}"
        + "".join(f"{n:>10}" for n in names) + f"{'agree':>9}")
    ratios, exact = {n: [] for n in names}, {n: True for n in names}
    for q in questions:
        ids = build_prompt_ids(tokenizer, "chat", [q.turns[0]], [])
        prompt = tokenizer.decode(ids)
        timed = []
        for _ in range(rounds):
            row = {"plain": llama_bench(tools, ggufs["Q4_1"], threads, len(ids), 1, max_new,
                                        runs=1)}
            theirs = llama_lookup(tools, ggufs["Q4_1"], threads, prompt, max_new)
            row["lookup"] = theirs["tokens"] / theirs["seconds"]
            row["accept"] = theirs.get("n_accept", 0) / max(theirs.get("n_drafted", 0), 1)
            tokens = {}
            for name in names:
                row[name], tokens[name] = decode_rate(METHODS[name](engine, eos, tokenizer), ids,
                                                      max_new)
                exact[name] &= tokens[name] == tokens["vanilla"]
            timed.append(row)
        mid = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
        for name in names:
            ratios[name].append(statistics.median(r[name] / r["plain"] for r in timed))
        same = llama_lookup(tools, twin, threads, prompt, max_new)["text"]
        agree = agreeing_tokens(tokenizer, tokens["vanilla"], same)
        say(f"{q.question_id:<10}{len(ids):>8}{mid['plain']:10.1f}{mid['lookup']:8.1f}"
            f"{100 * mid['accept']:6.0f}%" + "".join(f"{mid[n]:10.1f}" for n in names)
            + f"{agree:>5}/{len(tokens['vanilla'])}")
    say("llama.cpp: plain decode (llama-bench tg of that many tokens after the question's context) "
        "and llama-lookup (--spec-draft-n-max 10); agree: our vanilla's first tokens that "
        f"llama.cpp writes too on the same {dtype} bytes ({twin.name})")
    exact = [n for n in names if exact[n]]
    say("equal to vanilla on every question: " + (", ".join(exact[1:]) or "none"))
    def versus_plain(name: str) -> float:
        return statistics.median(ratios[name])
    best = max(exact, key=versus_plain)
    say("÷ llama.cpp's plain decode at the same context (within a round, median over rounds, "
        "then over questions): " + ", ".join(f"{n} {versus_plain(n):.2f}×" for n in names))
    say(f"fastest exact specbench method: {best}, {versus_plain(best):.2f}× llama.cpp's plain "
        "decode")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamacpp", type=Path, help="A folder with llama-bench and "
                        "llama-lookup already built (default: build them, cached).")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--sizes", default="1,2,4,16", help="block sizes (1 = decode)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bench", type=Path, help="Spec-Bench's question.jsonl: adds llama.cpp's "
                        "lookup against our PLD on its questions")
    parser.add_argument("--limit", type=int, default=2, help="questions per subtask (--bench)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speculation table: "
                        "every engine and method timed once a round, in turn")
    args = parser.parse_args()
    root = cache_root()
    tools = args.llamacpp or build_llamacpp(root, args.threads)
    if tools is None or args.build_only:
        return
    import torch

    from specbench_cli.models.targets import TARGETS, fetch_gguf, target_folder
    torch.set_num_threads(args.threads)
    quantized = fetch_gguf(TARGETS["smollm2"])
    folder = target_folder("smollm2")
    say(f"llama.cpp tools: {tools}\nCPU: {cpu_name()}; model: {quantized.name} "
        f"(ours: its dequantized weights, {folder})")
    ggufs = {"Q4_1": quantized}
    for outtype in ("f32", "bf16"):
        ggufs[outtype] = same_bytes_gguf(quantized, root, outtype)
    sizes = [int(n) for n in args.sizes.split(",")]
    decode_table(tools, ggufs, folder, args.threads, args.context, sizes, args.repeats)
    if args.bench:
        lookup_table(tools, ggufs, folder, args.threads, args.bench, args.limit,
                     args.max_new_tokens, args.rounds)


if __name__ == "__main__":
    main()
