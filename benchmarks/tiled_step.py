"""Block costs c(n) of two builds of engine/cpu.c side by side, in one process: the working
tree's and a git revision's (the one before a kernel change), each as the fused step of the same
engine, every repeat timing both in turn so that a shared machine's load drifts hit both alike.
In bf16 on a CPU with AMX the working tree runs twice, with its AMX products off and on.

c(n) is an n-token forward over a one-token forward (medians of repeats, each build over its own
one-token step); c*(n), the roofline, is max(t1, n × FLOP a token / product rate) / t1 with the
product rate of a 1024³ torch product in the run dtype, measured here (run/profile.py).

    SPECBENCH_FUSED=on .venv/bin/python benchmarks/tiled_step.py --before REV [--model smollm2]
        [--dtype fp32|bf16] [--context 256] [--repeats 9] [--blocks 2,4,8,16,32,64] [--threads N]

`--products`: the products alone (every layer's and the LM head, in layer order, cpu.c's
product_f32_out over n rows), the two builds in turn, n-row pass over one-row pass.

On a machine whose cores other processes share, `--threads 1` keeps OpenMP's barriers from
waiting on a thread the OS has put aside (the kernels' arithmetic per thread is the same).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from specbench_cli.engine import fused, kernels
from specbench_cli.engine.kernels import linear_groups
from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.run.profile import matmul_flops_per_token, product_rate


def build_at(rev: str, folder: Path):
    """cpu.c as of git revision `rev`, compiled as engine/kernels.py compiles it, with the
    signatures engine/fused.py declares."""
    source = folder / "cpu.c"
    source.write_bytes(subprocess.run(
        ["git", "show", f"{rev}:specbench_cli/engine/cpu.c"], check=True,
        capture_output=True).stdout)
    cc = os.environ.get("CC") or "cc"
    out = folder / "cpu.so"
    subprocess.run([cc, *kernels.CFLAGS, str(source), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    lib.set_isa.argtypes = [ctypes.c_int]
    lib.set_isa(kernels.isa_level())
    new = fused.library()
    for name in ("decode_layers", "decode_segments", "product_f32_out"):
        getattr(lib, name).restype = getattr(new, name).restype
        getattr(lib, name).argtypes = getattr(new, name).argtypes
    if not hasattr(lib, "set_amx"):             # a revision from before AMX products
        lib.set_amx = lambda on: None
    return lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the other cpu.c")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--blocks", default="2,4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--products", action="store_true", help="time the products alone")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="--products: wall time, or this thread's CPU time (one thread: "
                             "the time the OS gave other processes left out)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",") if b]
    engine, _, _ = load_engine(str(model_folder(args.model)), dtype=args.dtype, device="cpu",
                               with_tokenizer=False)
    tmp = tempfile.TemporaryDirectory()
    after = fused.FusedLayers(engine)
    before = fused.FusedLayers(engine)
    before.lib = build_at(args.before, Path(tmp.name))
    builds = {args.before: before, "working tree": after}
    if fused.can_use_amx(engine):       # bf16 on a CPU with AMX: the working tree's AMX products too
        builds["working tree, AMX"] = fused.FusedLayers(engine, amx=True)

    def use(name):
        engine.fused = builds[name]
        engine.fused.lib.set_amx(engine.fused.amx)     # (--products calls the library directly)
    if args.products:
        clock = time.thread_time if args.clock == "thread" else time.perf_counter
        return time_products(engine, {k: b.lib for k, b in builds.items()}, use, blocks,
                             args.repeats, clock)
    ctx = args.context
    cache = engine.cache(ctx + max(blocks + [1]) + 8)
    ids = {n: torch.randint(engine.config.vocab_size, (1, n)) for n in [1] + blocks}
    times = {(b, n): [] for b in builds for n in [1] + blocks}
    with torch.inference_mode():
        engine.fused = after
        engine(torch.randint(engine.config.vocab_size, (1, ctx)), cache, 0)
        for i in range(args.repeats + 1):           # the first round warms up
            for name in builds:
                use(name)
                for n in [1] + blocks:
                    cache.truncate(ctx)
                    start = time.perf_counter()
                    engine(ids[n], cache, ctx)
                    if i:
                        times[name, n].append(time.perf_counter() - start)
    rate = product_rate(torch.device("cpu"), engine.dtype)["flops_per_s"]
    flops = matmul_flops_per_token(engine)
    load = os.getloadavg()
    print(f"{args.model} {args.dtype}, context {ctx}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}; product rate {rate / 1e9:.0f} GFLOP/s, "
          f"{flops / 1e9:.3f} GFLOP a token; load average {load[0]:.2f} {load[1]:.2f}")
    for name in builds:
        t1 = statistics.median(times[name, 1])
        cells = []
        for n in blocks:
            c = statistics.median(times[name, n]) / t1
            roof = max(t1, n * flops / rate) / t1
            cells.append(f"c({n}) {c:.2f}/{roof:.2f}={c / roof:.2f}")
        print(f"{name:>14}: step {1e3 * t1:6.2f} ms; c(n)/c*(n): " + ", ".join(cells))


def time_products(engine, libs: dict, use, blocks: list[int], repeats: int, clock):
    weights = [m.weight for ms in linear_groups(engine).values() for m in ms]
    weights.sort(key=lambda w: w.data_ptr())          # layer order (engine/arena.py)
    bf16 = int(engine.dtype == torch.bfloat16)
    width = max(w.shape[1] for w in weights)
    x = {n: torch.randn(n, width).to(engine.dtype) for n in [1] + blocks}
    out = torch.empty(max(blocks + [1]) * max(w.shape[0] for w in weights))
    times = {(name, n): [] for name in libs for n in [1] + blocks}
    for i in range(repeats + 1):
        for name, lib in libs.items():
            use(name)
            for n in [1] + blocks:
                start = clock()
                for w in weights:
                    lib.product_f32_out(x[n].data_ptr(), w.data_ptr(), None, out.data_ptr(), n,
                                        w.shape[0], w.shape[1], bf16)
                if i:
                    times[name, n].append(clock() - start)
    flops = 2 * sum(w.numel() for w in weights)
    load = os.getloadavg()
    print(f"products alone, {engine.dtype}, {torch.get_num_threads()} threads, medians of "
          f"{repeats} ({clock.__name__}); {flops / 1e9:.3f} GFLOP a row; load average "
          f"{load[0]:.2f} {load[1]:.2f}")
    for name in libs:
        t1 = statistics.median(times[name, 1])
        print(f"{name:>14}: one row {1e3 * t1:6.2f} ms; " + ", ".join(
            f"{n}: {statistics.median(times[name, n]) / t1:.2f} "
            f"({n * flops / statistics.median(times[name, n]) / 1e9:.0f} GFLOP/s)"
            for n in blocks))


if __name__ == "__main__":
    main()
