"""Mixed precision for training, taken where it measures faster.

bf16 autocast runs the products in bf16 (weights, optimizer state and the loss stay fp32). Its
speed depends on the device, not on a flag: on the Intel Xeons with AMX a bf16 product over 64
rows runs ~4.6x faster than an fp32 one, while on an AMD EPYC with AVX512-BF16 but no AMX the
built-in model's training step is ~1.6x *slower* under autocast (benchmarks/build_profile.py).
So the choice is timed once per machine and kind of step, on the step itself, and cached in
$SPECBENCH_HOME/kernels/precision.json; `SPECBENCH_TRAIN_PRECISION=fp32|bf16` forces one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Callable

import torch

from ..engine import kernels
from ..errors import SpecbenchError

# bf16 must beat fp32 by this much: a rounding change for a small gain is not worth it.
MIN_GAIN = 0.15
CHOICES = ("fp32", "bf16")


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The context a training step's forward runs in for `precision`."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_seconds(step: Callable[[], None], precision: str, device, repeats: int) -> float:
    """Median seconds of `step()` under `precision`, after two warm-up steps."""
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        with autocast(precision, device):
            step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def choose_precision(kind: str, step: Callable[[], None], device: torch.device | str = "cpu",
                     repeats: int = 5) -> tuple[str, str]:
    """(precision, why) for training steps of `kind` (e.g. the built-in recipe's hash) on this
    device. `step` must run one forward + backward (its optimizer update left out, so timing
    changes no weights)."""
    forced = os.environ.get("SPECBENCH_TRAIN_PRECISION", "auto")
    if forced in CHOICES:
        return forced, f"SPECBENCH_TRAIN_PRECISION={forced}"
    if forced != "auto":
        raise SpecbenchError(f"SPECBENCH_TRAIN_PRECISION={forced!r}: choose auto, fp32 or bf16")
    device = torch.device(device)
    if device.type == "cpu" and not {"avx512_bf16", "amx_bf16"} & kernels.cpu_flags():
        return "fp32", "fp32 (this CPU has no bf16 units)"
    key = f"{kernels.machine_key(device)} | {kind}"
    path = kernels.kernels_home() / "precision.json"
    cache = kernels.read_json(path)
    if key not in cache:
        cache[key] = {p: round(1e3 * step_seconds(step, p, device, repeats), 2)
                      for p in CHOICES}
        kernels.write_json(path, cache)
    ms = cache[key]
    pick = "bf16" if ms["bf16"] < (1 - MIN_GAIN) * ms["fp32"] else "fp32"
    return pick, (f"{pick} (a training step measured: fp32 {ms['fp32']:.1f} ms, bf16 autocast "
                  f"{ms['bf16']:.1f} ms; bf16 is taken when ≥{100 * MIN_GAIN:.0f}% faster)")
