"""Matrix-product kernels chosen by measurement, per weight shape, dtype, device and block size.

A decoding step is a chain of matrix products over 1 to 64 rows (one token, or a method's
verification block) whose speed is the speed the weights stream from memory. No single kernel is
best at every block size, and the best one differs between CPUs (an AMD EPYC without AMX, an
Intel Xeon with it): so the engine measures. Candidates:

- `aten`: `F.linear` on the stored weight (MKL / oneDNN as torch dispatches; cuBLAS on CUDA).
- `gemv`: our own kernel (cpu.c) on x86 CPUs, fp32 and bf16: AVX2, AVX-512 where the CPU has
  it, AVX512-BF16 dot products for bf16 where it has those; at its best over a few rows.
- `onednn`: oneDNN's product on a copy of the weight prepacked for its blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`), CPU only, where the copies fit in memory.

For every group of Linear modules of one (out, in, bias, dtype, device), each candidate runs over
the group's real weights in layer order (so the weights stream from memory as in a step) at each
block size of BUCKETS, median of repeats; a candidate replaces `aten` only when at least
MIN_GAIN faster. The choices are cached in $SPECBENCH_HOME/kernels/ keyed by the CPU, thread
count, torch version and kernel source, so a run's start-up stays short. Every kernel computes
each output as one dot product in the run dtype's accumulator: only the summation order differs,
and a different order can only move a near-tie, which the equality report already separates.

Products run through the chosen kernels only without autograd (inference); training always uses
`F.linear`. `SPECBENCH_KERNELS=aten` turns the choice off; `=gemv` or `=onednn` forces one where
it applies (tests, benchmarks).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SpecbenchError
from ..files import atomic_write, sha256_of, specbench_home
from .arena import available_memory
from .llama import Linear

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MIN_GAIN = 0.03            # a kernel replaces aten only when this much faster (noise margin)
REPEATS = 5
SOURCE = Path(__file__).with_name("cpu.c")
CFLAGS = ["-O3", "-fopenmp", "-mavx2", "-mfma", "-mf16c", "-shared", "-fPIC"]
ENV = "SPECBENCH_KERNELS"


# The bucket a block of `rows` rows is timed at: the smallest bucket holding it (the last for
# larger blocks).
def bucket_of(rows: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    return next((b for b in buckets if rows <= b), buckets[-1])


# ---------------------------------------------------------------------------------------------
# The kernels. Each `bind_*` takes a Linear module and returns its product as a function of the
# input alone (any leading shape), with everything per-module looked up once: a step runs ~120
# products, and Python's attribute lookups would otherwise cost more than the small ones.

def bind_aten(linear):
    weight, bias = linear.weight, linear.bias
    return lambda x: F.linear(x, weight, bias)


_LIB = {}


def isa_level() -> int:
    """cpu.c's instruction set: 2 = AVX-512 with BF16 dot products, 1 = AVX-512, 0 = AVX2."""
    flags = cpu_flags()
    if not {"avx512f", "avx512bw"} <= flags:
        return 0
    return 2 if "avx512_bf16" in flags else 1


def cpu_library():
    """cpu.c compiled once per source, flags and compiler into $SPECBENCH_HOME/kernels/, loaded;
    None where it cannot be (not x86 with AVX2/FMA, no C compiler) with the reason in
    _LIB["why"]. A cached library whose checksum is not the one its build recorded (a build cut
    short by a kill or a full disk) is rebuilt, with one line saying so."""
    if "lib" in _LIB:
        return _LIB["lib"]
    _LIB["lib"], _LIB["why"] = None, ""
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma", "f16c"} <= flags:
        _LIB["why"] = "needs an x86 CPU with AVX2, FMA and F16C"
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _LIB["why"] = "no C compiler (cc/gcc) on PATH"
        return None
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()
                         + compiler_version(cc).encode()).hexdigest()[:16]
    path = kernels_home() / f"cpu-{tag}.so"
    # Checked before loading: dlopen of a file cut short can crash the process (SIGBUS).
    if not whole_build(path):
        if path.exists():
            note(f"{path} is incomplete (a build cut short, or a full disk); building it again")
        if not build_library(cc, path):
            return None
    lib = ctypes.CDLL(str(path))
    for name in ("gemv_f32", "gemv_bf16"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    lib.set_isa.argtypes = [ctypes.c_int]
    lib.set_isa(isa_level())
    _LIB["lib"] = lib
    return lib


def compiler_version(cc: str) -> str:
    """The compiler's first --version line: a new compiler builds a new library."""
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return (done.stdout.splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def digest_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def whole_build(library: Path) -> bool:
    """Whether `library` is the file its build recorded (the checksum is written last)."""
    digest = digest_file(library)
    return library.is_file() and digest.is_file() and \
        digest.read_text().strip() == sha256_of(library)


def build_library(cc: str, path: Path) -> bool:
    """Compile cpu.c to `path` under a temporary name, then rename (a concurrent run sees the
    whole file or none), then record its checksum; False with the reason in _LIB["why"] where
    the compiler fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        done = subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", str(built), "-lm"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            _LIB["why"] = f"{cc} failed: {done.stderr.strip().splitlines()[-1:]}"
            return False
        built.replace(path)
    atomic_write(digest_file(path), sha256_of(path))
    return True


def bind_gemv(linear):
    weight, bias = linear.weight, linear.bias
    n, k = weight.shape
    lib = cpu_library()
    fn = lib.gemv_f32 if weight.dtype == torch.float32 else lib.gemv_bf16
    w_ptr, b_ptr = weight.data_ptr(), 0 if bias is None else bias.data_ptr()

    def gemv(x):
        x = x.contiguous()
        out = torch.empty(x.shape[:-1] + (n,), dtype=x.dtype)
        fn(x.data_ptr(), w_ptr, b_ptr, out.data_ptr(), x.numel() // k, n, k)
        return out
    gemv.keep = weight, bias        # the pointers stay valid as long as the function lives
    return gemv


def bind_onednn(linear):
    packed, bias, product = linear.packed, linear.bias, torch.ops.mkldnn._linear_pointwise
    return lambda x: product(x, packed, bias, "none", [], "")


KERNELS = {"aten": bind_aten, "gemv": bind_gemv, "onednn": bind_onednn}


def applies(name: str, linear, rows: int) -> bool:
    """Whether kernel `name` can run this module's product over `rows` rows at all."""
    w = linear.weight
    if name == "aten":
        return True
    if w.device.type != "cpu" or not w.is_contiguous():
        return False
    if name == "gemv":
        return w.dtype in (torch.float32, torch.bfloat16) and cpu_library() is not None
    if name == "onednn":
        return w.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Choosing.

@functools.lru_cache(maxsize=None)
def cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (Linux), None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    return frozenset((cpuinfo("flags") or "").split())


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def kernels_home() -> Path:
    return specbench_home() / "kernels"


def machine_key(device: torch.device) -> str:
    """What a measured choice holds for: the device, the CPU's ISA, threads, torch, kernels."""
    parts = [device_name(device), device.type, str(torch.get_num_threads()), torch.__version__,
             hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:8]]
    if device.type == "cpu":
        isa = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
        parts.append(hashlib.sha256(" ".join(isa).encode()).hexdigest()[:8])
    return " | ".join(parts)


def group_key(linear) -> str:
    w = linear.weight
    return (f"{w.shape[0]}x{w.shape[1]} {str(w.dtype).removeprefix('torch.')}"
            f"{' +bias' if linear.bias is not None else ''}")


def time_group(modules, name: str, rows: int, repeats: int = REPEATS) -> float:
    """Median seconds of one pass of kernel `name` over every module of a group, in order."""
    k = modules[0].weight.shape[1]
    x = torch.randn(rows, k, dtype=modules[0].weight.dtype)      # CPU only (choose_kernels)
    products = [KERNELS[name](m) for m in modules]
    times = []
    for i in range(repeats + 1):      # the first pass warms up (packing, page faults, dispatch)
        start = time.perf_counter()
        for product in products:
            product(x)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def candidates(modules, rows: int, forced: str, packable: bool) -> list[str]:
    names = ["aten"] + [n for n in ("gemv", "onednn") if applies(n, modules[0], rows)
                        and (n != "onednn" or packable)]
    if forced != "auto":
        return [forced] if forced in names else ["aten"]
    return names


def measure_group(modules, forced: str, packable: bool) -> dict:
    """{bucket: {"kernel": name, "ms": {candidate: ms}}} for one group."""
    out = {}
    for rows in BUCKETS:
        names = candidates(modules, rows, forced, packable)
        if len(names) == 1:
            out[str(rows)] = {"kernel": names[0], "ms": {}}
            continue
        ms = {n: time_group(modules, n, rows) * 1e3 for n in names}
        best = min(ms, key=ms.get)
        if best != "aten" and ms[best] > (1 - MIN_GAIN) * ms["aten"]:
            best = "aten"
        out[str(rows)] = {"kernel": best, "ms": {n: round(v, 3) for n, v in ms.items()}}
    return out


def linear_groups(engine) -> dict[str, list]:
    """The products a forward runs, by group: every Linear, fused ones (plain attributes, see
    Engine.fuse_projections) in place of their parts."""
    found = []
    for module in engine.modules():
        found += [module] if isinstance(module, Linear) else []
        found += [v for v in vars(module).values() if isinstance(v, Linear)]
    parts = {id(p) for m in found for p in getattr(m, "parts", ())}
    groups: dict[str, list] = {}
    seen = set()
    for m in found:
        if id(m) not in parts and id(m.weight) not in seen:
            seen.add(id(m.weight))
            groups.setdefault(group_key(m), []).append(m)
    return groups


def pack_budget_ok(groups) -> bool:
    """oneDNN's packed copies double the weights: try them only where that fits easily."""
    total = sum(m.weight.nbytes for ms in groups.values() for m in ms)
    free = available_memory()
    return free is not None and total < free // 4


def choose_kernels(engine, console=None) -> dict:
    """Measure (or read from the cache) and install each Linear module's kernel per block size.
    Returns the choices: {"machine": key, "groups": {group: {bucket: {...}}}, "cached": bool}."""
    forced = os.environ.get(ENV, "auto").lower()
    if forced not in ("auto", *KERNELS):
        raise SpecbenchError(f"{ENV}={forced!r}: choose auto, {', '.join(KERNELS)}")
    groups = linear_groups(engine)
    key = machine_key(engine.device)
    if forced == "aten" or engine.device.type != "cpu":
        # CUDA: cuBLAS is the only candidate today; nothing to measure.
        plan = {g: {str(b): {"kernel": "aten", "ms": {}} for b in BUCKETS} for g in groups}
        return install(engine, groups, plan, forced, cached=True, key=key)
    packable = pack_budget_ok(groups)
    cache_file = kernels_home() / "choices.json"
    cache = read_json(cache_file)
    entry = f"{key} | {forced} | {'pack' if packable else 'nopack'}"
    known = cache.setdefault(entry, {})
    if not isinstance(known, dict):
        known = cache[entry] = {}
    stale = [g for g in groups if g in known and not valid_choice(known[g])]
    if stale:
        note(f"{cache_file}: choices for {', '.join(stale)} are not what this version writes; "
             "measuring again")
    todo = [g for g in groups if g not in known or g in stale]
    if todo and console is not None:
        console.print(f"[dim]choosing matrix-product kernels for {len(todo)} weight shapes on "
                      f"{device_name(engine.device)} (once; cached in {cache_file.parent})[/dim]")
    with torch.inference_mode():
        for g, modules in groups.items():
            if packable and (g in todo or uses(known[g], "onednn")):
                pack(modules)
            if g in todo:
                known[g] = measure_group(modules, forced, packable)
    if todo:
        write_json(cache_file, cache)
    plan = {g: known[g] for g in groups}
    return install(engine, groups, plan, forced, not todo, key)


def valid_choice(buckets) -> bool:
    """A group's cached choice: a kernel name for every block-size bucket."""
    return isinstance(buckets, dict) and all(
        isinstance(buckets.get(str(b)), dict) and buckets[str(b)].get("kernel") in KERNELS
        for b in BUCKETS)


def uses(buckets: dict, name: str) -> bool:
    return any(c["kernel"] == name for c in buckets.values())


def pack(modules):
    for m in modules:
        if applies("onednn", m, 16) and getattr(m, "packed", None) is None:
            # Packed for 16-row blocks: of the layouts tried (1, 16) the best over 1-64 rows.
            m.packed = torch.ops.mkldnn._reorder_linear_weight(m.weight, 16)


def install(engine, groups, plan, forced, cached, key) -> dict:
    """Give every module its table of products by block size (llama.Linear.forward)."""
    for g, modules in groups.items():
        # A cached choice whose kernel cannot run now (say, no compiler any more) falls back.
        names = {int(b): c["kernel"] if applies(c["kernel"], modules[0], int(b)) else "aten"
                 for b, c in plan[g].items()}
        for m in modules:
            if set(names.values()) == {"aten"}:
                m.kernels = None
            else:
                bound = {name: KERNELS[name](m) for name in set(names.values())}
                m.kernels = tuple(bound[names[bucket_of(rows)]]
                                  for rows in range(BUCKETS[-1] + 1))
                # a plain attribute: assigned normally, a Parameter would be registered twice
                object.__setattr__(m, "kernel_weight", m.weight)
            if "onednn" not in names.values():
                m.packed = None          # free the copy no bucket uses
    engine.kernel_choice = {"machine": key, "mode": forced, "cached": cached,
                            "groups": plan}
    return engine.kernel_choice


# The caches of measured choices ($SPECBENCH_HOME/kernels/*.json): {machine key: entry}. Each is
# checked before it is trusted: an unreadable file or an entry of the wrong shape is measured
# again, with one line saying so, never a traceback.

def read_json(path: Path) -> dict:
    """A cache file's entries; {} where there is none yet, or (with one line) where it does not
    parse as a JSON object."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    note(f"{path} is unreadable (cut short or corrupt); measuring again")
    return {}


def write_json(path: Path, data: dict):
    atomic_write(path, json.dumps(data, indent=1))


def cached_entry(path: Path, key: str, valid, measure):
    """The entry `key` of cache file `path`, measured (and written back) where it is missing
    or fails `valid` (an older version's shape, a hand edit)."""
    cache = read_json(path)
    entry = cache.get(key)
    if entry is not None and not valid(entry):
        note(f"{path}: the entry for this machine is not what this version writes; measuring "
             "again")
        entry = None
    if entry is None:
        entry = cache[key] = measure()
        write_json(path, cache)
    return entry


def timed_ms(entry, names) -> bool:
    """Whether a cache entry is {name: milliseconds} for every one of `names`."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(n), (int, float)) and not isinstance(entry.get(n), bool)
        for n in names)


def note(message: str):
    """One line on stderr about something specbench mended by itself."""
    print(f"specbench: {message}", file=sys.stderr, flush=True)


def summary(choice: dict) -> list[tuple[str, str]]:
    """(group, "1:gemv 2:gemv … 64:onednn") rows for printing, then how the decoder layers run
    (engine/fused.py) and where the weights live (engine/arena.py) where those are known."""
    rows = [(g, " ".join(f"{b}:{c['kernel']}" for b, c in buckets.items()))
            for g, buckets in choice["groups"].items()]
    fused = choice.get("fused")
    if fused:
        timed = ", ".join(f"{n}: {ms['torch']:.2f}→{ms['fused']:.2f}"
                          for n, ms in fused["rows"].items())
        how = "fused C step" if fused["used"] else "torch modules"
        rows.append(("decoder layers", f"{how}, {fused['why']}"
                     + (f" (ms over the first layers, torch→fused by rows: {timed})" if timed else "")))
    if choice.get("arena"):
        rows.append(("weights", choice["arena"]))
    return rows


if __name__ == "__main__":      # python -m specbench_cli.engine.kernels: build and report
    print(cpu_library() or _LIB["why"], file=sys.stderr)
