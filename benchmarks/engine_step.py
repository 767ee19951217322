"""Where a one-token step goes on this device, side by side: the engine's step (the fused C
layers where they were chosen, engine/fused.py), the same step through torch's modules with the
chosen product kernels, and with F.linear everywhere; the products alone; a plain read of every
weight; and the streaming probe the floor is computed from. Then the block costs c(n).

Every repeat runs each of them once, in turn, so a shared machine's drifts hit all alike; the
table shows medians. "share of the floor" is the median over the repeats of (weight bytes / that
repeat's probe bandwidth) / that repeat's time: the host's bandwidth drifts (30 to 60 GB/s within
minutes on the shared 2-core machines), and a ratio of medians taken at different moments would
mix the two regimes.

    .venv/bin/python benchmarks/engine_step.py [--model smollm2] [--dtype fp32|bf16]
        [--context 256] [--repeats 15] [--blocks 2,4,8,16,64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specbench_cli.engine.kernels import cpu_name, linear_groups
from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.run.profile import bandwidth_probe, weight_bytes


def once_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--blocks", default="2,4,8,16,64")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",") if b]
    engine, _, _ = load_engine(str(model_folder(args.model)), dtype=args.dtype, device="cpu",
                               with_tokenizer=False)
    linears = [m for ms in linear_groups(engine).values() for m in ms]
    linears.sort(key=lambda m: m.weight.data_ptr())     # layer order (engine/arena.py)
    chosen, fused = {id(m): m.kernels for m in linears}, engine.fused

    def use(path: str):
        """fused: the engine as loaded; torch: its modules with the chosen kernels; aten: its
        modules with F.linear everywhere."""
        engine.fused = fused if path == "fused" else None
        for m in linears:
            m.kernels = None if path == "aten" else chosen[id(m)]

    weights = list({id(p): p for p in engine.parameters()}.values())
    cache = engine.cache(args.context + max(blocks + [1]) + 8)
    ctx = args.context
    with torch.inference_mode():
        engine(torch.randint(engine.config.vocab_size, (1, ctx)), cache, 0)
        token = torch.tensor([[5]])
        ids = {n: torch.randint(engine.config.vocab_size, (1, n)) for n in blocks}

        def forward(n: int):
            cache.truncate(ctx)
            engine(token if n == 1 else ids[n], cache, ctx)

        inputs = {lin.in_features: torch.ones(1, 1, lin.in_features, dtype=engine.dtype)
                  for lin in linears}

        def products():
            for lin in linears:
                lin(inputs[lin.in_features])

        def read():
            for w in weights:
                w.sum()

        times: dict[str, list[float]] = {}
        probes = []
        probe, probe_bytes, _ = bandwidth_probe(engine.device)
        for path in ("fused", "torch", "aten"):     # warm every path once
            use(path)
            forward(1)
        for _ in range(args.repeats):
            # The probe first, then one unrecorded step. Timed first after the probe's gigabytes,
            # the step read 29 ms where `specbench profile` read 22-24 the same hour, and c(2)
            # came out 0.89 (2026-12-07, Xeon).
            probes.append(probe_bytes / once_ms(probe) * 1e3)
            use("fused")
            forward(1)
            for path in ("fused", "torch", "aten"):
                use(path)
                times.setdefault(f"{path} step", []).append(once_ms(lambda: forward(1)))
            use("fused")
            times.setdefault("products", []).append(once_ms(products))
            times.setdefault("read", []).append(once_ms(read))
            for n in blocks:
                times.setdefault(f"block {n}", []).append(once_ms(lambda: forward(n)))
    ms = {k: statistics.median(v) for k, v in times.items()}
    read_bytes = weight_bytes(engine)
    bw = statistics.median(probes)
    floor = 1e3 * read_bytes / bw
    print(f"{args.model} {args.dtype} on {cpu_name()}, {torch.get_num_threads()} threads, "
          f"context {ctx}; {read_bytes / 2**20:.1f} MiB of weights a step; streaming read "
          f"{bw / 1e9:.1f} GB/s (median of {len(probes)} probes, "
          f"{min(probes) / 1e9:.1f}–{max(probes) / 1e9:.1f}) → floor {floor:.2f} ms; "
          f"medians of {args.repeats}")
    if fused is None:
        print(f"  (no fused step on this machine: {engine.kernel_choice['fused']['why']})")
    rows = (("fused step", "engine one-token step"),
            ("torch step", "torch modules, chosen kernels"),
            ("aten step", "torch modules, F.linear"),
            ("products", "the products alone"), ("read", "sum over every weight"))
    for name, label in rows:
        share = statistics.median(read_bytes / p / (t / 1e3) for p, t in zip(probes, times[name]))
        print(f"{label:>30}: {ms[name]:8.2f} ms = {read_bytes / ms[name] / 1e6:6.1f} GB/s "
              f"({100 * share:.0f}% of the floor)")
    print(f"{'fused vs torch modules':>30}: {ms['torch step'] / ms['fused step']:.2f}× faster "
          f"(F.linear: {ms['aten step'] / ms['fused step']:.2f}×)")
    if blocks:
        print(f"{'c(n) = n-token block / step':>30}: " + ", ".join(
            f"c({n}) {ms[f'block {n}'] / ms['fused step']:.2f}" for n in blocks))


if __name__ == "__main__":
    main()
