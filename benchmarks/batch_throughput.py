"""Vanilla decoding of B sequences together against decoding them one after another, side by
side in one process: the aggregate throughput a batch buys on this device, per batch size.

    .venv/bin/python benchmarks/batch_throughput.py [--model smollm2] [--tokens 40] [--repeats 3]

Every batch size is timed in turn within each repeat (medians reported), from one prompt, so
the sequences stay in step and the ratio is the joined forward's alone: B × (time alone) over
the batch's time.
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
    args = parser.parse_args()
    if args.model is None:
        from specbench_cli.models.prepare import prepare_all
        args.model = str(prepare_all().model_dir)
    engine, tok, _ = load_engine(str(model_folder(args.model)), dtype=args.dtype, device="cpu")
    method = METHODS["vanilla"](engine, set(), tok)
    prompt = tok(PROMPT)["input_ids"]
    sizes = [int(s) for s in args.sizes.split(",")]
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


if __name__ == "__main__":
    main()
