"""Vanilla decoding of B sequences together against decoding them one after another, side by
side in one process: the aggregate throughput a batch buys on this device, per batch size.

    .venv/bin/python benchmarks/batch_throughput.py [--model smollm2] [--tokens 40] [--repeats 3]
    .venv/bin/python benchmarks/batch_throughput.py --model smollm2 --continuous 16

Every batch size is timed in turn within each repeat (medians reported), from one prompt, so
the sequences stay in step and the ratio is the joined forward's alone: B × (time alone) over
the batch's time.

--continuous N: N sequences whose budgets spread from tokens/8 to tokens (answers of unequal
length), decoded B at a time in fixed batches (each waits for its longest) and with continuous
batching (a finished one's place goes to the next at once), side by side in each repeat.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specbench_cli.engine.load import load_engine
from specbench_cli.methods import METHODS
from specbench_cli.methods.base import generate_batch
from specbench_cli.models.targets import model_folder

PROMPT = "Summarize the history of computing machines and their uses in science, briefly."


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="as for `specbench run` (default: built-in)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--continuous", type=int, default=0, metavar="N",
                        help="compare fixed and continuous batches over N unequal sequences")
    args = parser.parse_args()
    if args.model is None:
        from specbench_cli.models.prepare import prepare_all
        args.model = str(prepare_all().model_dir)
    engine, tok, _ = load_engine(str(model_folder(args.model)), dtype=args.dtype, device="cpu")
    method = METHODS["vanilla"](engine, set(), tok)
    prompt = tok(PROMPT)["input_ids"]
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.continuous:
        return compare_continuous(method, prompt, sizes, args)
    alone, together = [], {b: [] for b in sizes}
    with torch.inference_mode():
        method.generate(prompt, args.tokens)                      # warm-up
        for b in sizes:
            generate_batch(method, [prompt] * b, args.tokens)
        for _ in range(args.repeats):
            start = time.perf_counter()
            method.generate(prompt, args.tokens)
            alone.append(time.perf_counter() - start)
            for b in sizes:
                start = time.perf_counter()
                generate_batch(method, [prompt] * b, args.tokens)
                together[b].append(time.perf_counter() - start)
    one = statistics.median(alone)
    print(f"{args.model} {args.dtype}, {args.tokens} tokens, {torch.get_num_threads()} threads; "
          f"alone {1e3 * one:.0f} ms")
    for b in sizes:
        t = statistics.median(together[b])
        print(f"B={b}: {1e3 * t:.0f} ms, aggregate {b * args.tokens / t:.1f} tok/s, "
              f"{b * one / t:.2f}x of decoding them one after another")


def decode(method, prompt, budgets: list[int], width: int | None) -> float:
    """Seconds to decode one sequence per budget, `width` at a time (None: all at once)."""
    start = time.perf_counter()
    generate_batch(method, [prompt] * len(budgets), budgets, width)
    return time.perf_counter() - start


def compare_continuous(method, prompt, sizes, args):
    n, top = args.continuous, args.tokens
    budgets = [max(1, top // 8 + (top - top // 8) * i // max(1, n - 1)) for i in range(n)]
    budgets = budgets[::2] + budgets[1::2]          # long and short ones mixed in every batch
    tokens = sum(budgets)
    times = {(b, mode): [] for b in sizes for mode in ("fixed", "continuous")}
    with torch.inference_mode():
        decode(method, prompt, budgets[:max(sizes)], None)         # warm-up
        for _ in range(args.repeats):
            for b in sizes:
                times[b, "fixed"].append(sum(decode(method, prompt, budgets[i:i + b], None)
                                             for i in range(0, n, b)))
                times[b, "continuous"].append(decode(method, prompt, budgets, b))
    print(f"{args.model} {args.dtype}, {n} sequences of {min(budgets)}-{max(budgets)} tokens "
          f"({tokens} in all), {torch.get_num_threads()} threads, medians of {args.repeats}")
    for b in sizes:
        fixed, cont = (statistics.median(times[b, m]) for m in ("fixed", "continuous"))
        print(f"B={b}: fixed batches {tokens / fixed:.1f} tok/s, continuous {tokens / cont:.1f} "
              f"tok/s: {fixed / cont:.2f}x")


if __name__ == "__main__":
    main()
