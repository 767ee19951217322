"""Where a one-token step goes on this device: the bare matrix-vector products over the model's
own weight shapes against the engine's whole step, and both against the memory floor.

For each repeat, alternately: (a) the engine's one-token forward after a context of --context
tokens; (b) the same weights' products alone (every product a forward runs, for one token, in
layer order, so the weights stream from memory as in a step); (c) a sum over all weights (a pure
read); (a) and (b) once with the kernels the engine chose (engine/kernels.py) and once with plain
F.linear. Medians; the gap a − b is what the step spends outside the products (attention, norms,
RoPE, masks, Python).

    .venv/bin/python benchmarks/engine_step.py [--model smollm2] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specbench_cli.engine.kernels import linear_groups
from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.run.profile import stream_bandwidth, weight_bytes


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine, _, _ = load_engine(str(model_folder(args.model)), dtype=args.dtype, device="cpu",
                               with_tokenizer=False)
    linears = [m for ms in linear_groups(engine).values() for m in ms]
    linears.sort(key=lambda m: m.weight.data_ptr())     # roughly layer order
    chosen = {id(m): m.kernels for m in linears}

    def use(kernels: str):
        for m in linears:
            m.kernels = chosen[id(m)] if kernels == "chosen" else None
    weights = list({id(p): p for p in engine.parameters()}.values())
    cache = engine.cache(args.context + 8)
    with torch.inference_mode():
        engine(torch.randint(engine.config.vocab_size, (1, args.context)), cache, 0)
        token = torch.tensor([[5]])

        def step():
            cache.truncate(args.context)
            engine(token, cache, args.context)

        inputs = {lin.in_features: torch.ones(1, 1, lin.in_features, dtype=engine.dtype)
                  for lin in linears}

        def products():
            for lin in linears:
                lin(inputs[lin.in_features])

        def read():
            for w in weights:
                w.sum()

        results = {name: [] for name in ("step", "products", "aten step", "aten products",
                                         "read")}
        for _ in range(args.repeats):
            for kernels in ("chosen", "aten"):
                use(kernels)
                prefix = "aten " if kernels == "aten" else ""
                results[prefix + "step"].append(median_ms(step, 1))
                results[prefix + "products"].append(median_ms(products, 1))
            results["read"].append(median_ms(read, 1))
        use("chosen")
    ms = {k: statistics.median(v) for k, v in results.items()}
    read_bytes = weight_bytes(engine)
    bw = stream_bandwidth(engine.device)["bytes_per_s"]
    floor = 1e3 * read_bytes / bw
    print(f"{args.model} {args.dtype} on cpu, {torch.get_num_threads()} threads, context "
          f"{args.context}; {read_bytes / 2**20:.1f} MiB of weights a step; streaming read "
          f"{bw / 1e9:.1f} GB/s → floor {floor:.2f} ms; medians of {args.repeats}")
    for name, label in (("step", "engine one-token step"), ("products", "the products alone"),
                        ("aten step", "step, F.linear everywhere"),
                        ("aten products", "products, F.linear"),
                        ("read", "sum over every weight")):
        print(f"{label:>28}: {ms[name]:8.2f} ms  = {read_bytes / ms[name] / 1e6:6.1f} GB/s "
              f"({100 * floor / ms[name]:.0f}% of the streaming read)")
    outside = ms["step"] - ms["products"]
    print(f"{'outside the products':>28}: {outside:8.2f} ms  ({100 * outside / ms['step']:.0f}% "
          "of the step)")
    print(f"{'chosen kernels vs F.linear':>28}: step {ms['aten step'] / ms['step']:.2f}× faster, "
          f"products {ms['aten products'] / ms['products']:.2f}×")


if __name__ == "__main__":
    main()
