"""A bf16 model's KV cache in bf16 against fp32, side by side: one forward of n tokens after each
context, the same engine reading a cache of either dtype (the fused step on a CPU, torch's path
for the block sizes it does not take). A bf16 model's keys and values are bf16 values, so both
caches hold the same numbers and give the same logits (tests/test_fused.py); only the bytes a
step reads differ. Each round times every (context, dtype) once in turn; the ratio is taken
within a round, then the median over rounds.

    .venv/bin/python benchmarks/kv_cache_dtype.py [--model smollm2] [--contexts 256,768,1536]
        [--rows 1] [--rounds 11]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from specbench_cli.engine.kernels import cpu_name
from specbench_cli.engine.load import load_engine
from specbench_cli.engine.timing import block_step, median_seconds
from specbench_cli.models.targets import model_folder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="a model folder, hub id or named target")
    parser.add_argument("--contexts", default="256,768,1536")
    parser.add_argument("--rows", type=int, default=1, help="tokens in the timed forward")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=9, help="forwards timed per round (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine, _, _ = load_engine(str(model_folder(args.model)), dtype="bf16", device="cpu",
                               with_tokenizer=False)
    contexts = [int(c) for c in args.contexts.split(",")]
    times = {(c, d): [] for c in contexts for d in DTYPES}
    with torch.inference_mode():
        steps = {(c, d): block_step(engine, args.rows, c,
                                    engine.new_cache(c + args.rows + 8, dtype=dtype))
                 for c in contexts for d, dtype in DTYPES.items()}
        for _ in range(args.rounds):
            for key, step in steps.items():
                times[key].append(median_seconds(step, engine.device, args.repeats) * 1e3)
    print(f"bf16 model, {args.rows}-token forward, {cpu_name()}, {args.threads} threads; "
          f"medians of {args.rounds} rounds (fused step: {engine.fused is not None})")
    for c in contexts:
        fp32, bf16 = times[(c, "fp32")], times[(c, "bf16")]
        ratio = statistics.median(a / b for a, b in zip(fp32, bf16))
        print(f"context {c:>5}: fp32 cache {statistics.median(fp32):7.2f} ms, bf16 cache "
              f"{statistics.median(bf16):7.2f} ms, fp32 ÷ bf16 {ratio:.3f}")


if __name__ == "__main__":
    main()
