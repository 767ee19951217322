"""`specbench profile`: what a forward costs on this device, against the memory wall.

Decoding reads every weight once per target forward, whatever the number of tokens in the block,
as long as the arithmetic stays cheaper than that read. So the two numbers that explain a
speculative method's speedup are measured here:
- the latency of a forward over a block of n new tokens (n = 1, 2, 4, ... 64, causal within the
  block, after a committed context of c tokens), median of repeats with device sync;
- the device's streaming read bandwidth, on a buffer several times the last-level cache, written
  first (untouched pages read as shared zero pages and look impossibly fast); on CUDA a
  device-to-device copy.
The floor `weight bytes / bandwidth` is the fastest any one-token step could be.
- the device's matrix-product rate in the run dtype (a square torch product, FLOP/s): with it,
  the roofline of an n-token block, c*(n) = max(t1, n × FLOP per token / rate) / t1, what an
  n-token forward could cost relative to the measured one-token forward t1 if the products ran
  at the device's rate while the weights stream once. c(n) / c*(n) says how far the engine's
  own kernels are from what the device allows.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import torch

from ..analysis.report import PROFILE_FILE
from ..bench.prompts import build_prompt_ids
from ..engine import Engine
from ..engine.arena import huge_buffer
from ..engine.kernels import summary
from ..engine.load import DTYPE_NAMES
from ..engine.timing import block_latency, block_step, joined_block_step, median_seconds
from .runner import environment

SIZES = (1, 2, 4, 8, 16, 32, 64)


def weight_bytes(engine: Engine) -> int:
    """Bytes of weights one forward reads: every layer, the final norm and the LM head. The
    embedding table is only gathered a row a token, unless it is the (tied) LM head."""
    unique = {id(p): p for p in engine.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    embed = engine.model.embed_tokens.weight
    if embed is not engine.lm_head.weight:
        total -= embed.numel() * embed.element_size()
    return total


def matmul_flops_per_token(engine: Engine) -> int:
    """2 × the weights of every matrix product a token goes through (layers and LM head);
    attention over the context is left out (small next to the weights at these lengths)."""
    mats = [m.weight for m in engine.modules() if isinstance(m, torch.nn.Linear)]
    return 2 * sum(w.numel() for w in {id(w): w for w in mats}.values())


def product_rate(device: torch.device, dtype: torch.dtype, size: int = 1024,
                 repeats: int = 7) -> dict:
    """FLOP/s of a size × size × size torch product in `dtype` (median of repeats): the
    arithmetic the device offers a block's products (oneDNN/MKL on a CPU, cuBLAS on CUDA)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    with torch.inference_mode():
        seconds = median_seconds(lambda: a @ b, device, repeats)
    return {"flops_per_s": 2 * size ** 3 / seconds,
            "how": f"{size}³ torch product in {str(dtype).removeprefix('torch.')}, median of "
                   f"{repeats}"}


def roofline_cost(step_seconds: float, flops_per_token: int, flops_per_s: float,
                  sizes) -> dict[str, float]:
    """c*(n) = max(t1, n × FLOP per token / rate) / t1: an n-token block costs one step while
    its products take less time than the step, then grows with the arithmetic."""
    return {str(n): max(step_seconds, n * flops_per_token / flops_per_s) / step_seconds
            for n in sizes}


def last_level_cache_bytes() -> int | None:
    """The CPU's largest cache (Linux sysfs), or None where it cannot be read."""
    best = None
    for level_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/level"):
        try:
            level = int(level_file.read_text())
            size = level_file.with_name("size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        value = int(size.rstrip("KMG")) * scale
        if best is None or level > best[0]:
            best = (level, value)
    return best[1] if best else None


def bandwidth_probe(device: torch.device):
    """(one pass of the probe, bytes it reads, how): a sum over a written CPU buffer of
    max(8 × LLC, 512 MiB), or a device-to-device copy on CUDA (read + write counted)."""
    if device.type == "cuda":
        size = 1 << 30
        src = torch.ones(size, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), 2 * size, "device-to-device copy of 1 GiB " \
            "(read + write bytes)"
    size = max(8 * (last_level_cache_bytes() or 0), 512 << 20)
    # Memory of the kind the engine's weights live in (huge pages where the OS has them:
    # engine/arena.py), written first: real pages, not the shared zero page.
    buf = huge_buffer(size).view(torch.float32).fill_(1.0)
    return buf.sum, size, (f"sum of a written {size >> 20} MiB fp32 buffer (8 × LLC or "
                           "512 MiB, huge pages where the OS has them)")


def stream_bandwidth(device: torch.device, repeats: int = 7) -> dict:
    """Bytes per second the device streams (bandwidth_probe, median of repeats)."""
    probe, size, how = bandwidth_probe(device)
    seconds = median_seconds(probe, device, repeats)
    return {"bytes_per_s": size / seconds, "buffer_bytes": size,
            "llc_bytes": last_level_cache_bytes() if device.type == "cpu" else None, "how": how}


def floor_share(engine: Engine, context: int, rounds: int = 9) -> dict:
    """The one-token step against the bandwidth probe, side by side: each round times a probe
    pass and a one-token step in turn, and the share of the floor is the median of the rounds'
    (bytes / probe bandwidth) / step. A shared host's bandwidth drifts (seen here: 30 to 60 GB/s
    within minutes); rounds taken at once see the same machine."""
    device = engine.device
    probe, size, how = bandwidth_probe(device)
    read = weight_bytes(engine)
    step = block_step(engine, 1, context)
    rates, steps, shares = [], [], []
    with torch.inference_mode():
        for i in range(rounds + 1):         # the first round warms up
            rate = size / median_seconds(probe, device, 1, warmup=0)
            seconds = median_seconds(step, device, 3, warmup=1)
            if i:
                rates.append(rate)
                steps.append(seconds)
                shares.append(read / rate / seconds)
    return {"bandwidth": {"bytes_per_s": statistics.median(rates), "buffer_bytes": size,
                          "range": [min(rates), max(rates)], "rounds": rounds, "how": how},
            "share": statistics.median(shares), "step_seconds": statistics.median(steps)}


def joined_latencies(engine: Engine, batch_sizes, sizes, context: int, repeats: int,
                     progress=None) -> dict[str, dict[str, float]]:
    """Batch size B → n → median seconds of a joined forward of B sequences with n new tokens
    each (after `context` committed ones each): what a step costs at batch size B."""
    task = progress.add_task("profile batches", total=len(batch_sizes) * len(sizes), info="") \
        if progress else None
    table: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for b in batch_sizes:
            table[str(b)] = {}
            for n in sizes:
                if progress:
                    progress.update(task, info=f"{b} sequences × {n} tokens")
                step = joined_block_step(engine, b, n, context)
                table[str(b)][str(n)] = median_seconds(step, engine.device, repeats)
                if progress:
                    progress.update(task, advance=1)
    return table


def profile_engine(engine: Engine, contexts=(256, 2048), sizes=SIZES, repeats: int = 10,
                   progress=None, batch_sizes=()) -> dict:
    """Latency table, bandwidth, and what follows from them (the profile.json content);
    with `batch_sizes` (above 1), the joined forwards' latencies at the first context too."""
    device = engine.device
    side_by_side = floor_share(engine, contexts[0])
    bandwidth = side_by_side["bandwidth"]
    read = weight_bytes(engine)
    task = progress.add_task("profile", total=len(contexts) * len(sizes), info="") \
        if progress else None
    latency: dict[str, dict[str, float]] = {}
    for context in contexts:
        latency[str(context)] = {}
        for n in sizes:
            if progress:
                progress.update(task, info=f"context {context}, {n} tokens")
            latency[str(context)][str(n)] = block_latency(engine, n, context, repeats)
            if progress:
                progress.update(task, advance=1)
    first = latency[str(contexts[0])]
    floor = read / bandwidth["bytes_per_s"]
    widest = str(max(sizes))
    flops = matmul_flops_per_token(engine)
    rate = product_rate(device, engine.dtype)
    return {
        "weight_bytes": read,
        "bandwidth": bandwidth,
        "floor_seconds": floor,
        "contexts": list(contexts), "sizes": list(sizes), "repeats": repeats,
        "latency_seconds": latency,
        # n = 1 streams the weights once: the share of the measured bandwidth it achieves,
        # timed side by side with the probe (floor_share)
        "achieved_bandwidth_share": side_by_side["share"],
        "relative_cost": {n: t / first["1"] for n, t in first.items()},
        "flops_per_second_at_widest": flops * max(sizes) / first[widest],
        "flops_per_token": flops,
        "product_rate": rate,
        # per context: c*(n) against that context's measured one-token forward
        "roofline_cost": {c: roofline_cost(t["1"], flops, rate["flops_per_s"], sizes)
                          for c, t in latency.items()},
        "batch_latency_seconds": joined_latencies(engine, batch_sizes, sizes, contexts[0],
                                                  repeats, progress) if batch_sizes else {},
    }


def measured_profile(engine: Engine, model: str, contexts, sizes=SIZES, repeats: int = 10,
                     progress=None, batch_sizes=()) -> dict:
    """Profile the engine: the timings, with the model, dtype, device and machine."""
    result = profile_engine(engine, contexts, sizes, repeats, progress, batch_sizes)
    result.update(model=model, dtype=DTYPE_NAMES[engine.dtype], device=str(engine.device),
                  environment=environment(engine.device))
    choice = getattr(engine, "kernel_choice", None)
    if choice:
        result["kernels"] = dict(summary(choice))
    if getattr(engine, "dtype_choice", None):
        result["dtype_choice"] = engine.dtype_choice
    return result


def write_profile(engine: Engine, model: str, path: Path, contexts, sizes=SIZES,
                  repeats: int = 10, progress=None, batch_sizes=()) -> dict:
    """Profile the engine and write profile.json."""
    result = measured_profile(engine, model, contexts, sizes, repeats, progress, batch_sizes)
    Path(path).write_text(json.dumps(result, indent=2))
    return result


def prompt_lengths(plan) -> list[int]:
    """Each question's first prompt in tokens (`plan`: an api.RunPlan): the cost model profiles
    at their median."""
    return [len(build_prompt_ids(plan.tokenizer, plan.config.template, [q.turns[0]], []))
            for q in plan.questions]


def attach_profile(measure, out: Path, profile: Path | None, prompt_lengths: list[int]):
    """The cost model's yardstick in the run directory: the given profile, or one measured now
    at the run's median prompt length by `measure(contexts) -> profile dict` (on this engine,
    or on a Ray worker's)."""
    if profile is not None:
        shutil.copyfile(profile, out / PROFILE_FILE)
        return
    if (out / PROFILE_FILE).exists():       # a resumed run keeps its first profile
        return
    context = int(statistics.median(prompt_lengths))
    (out / PROFILE_FILE).write_text(json.dumps(measure([context]), indent=2))
