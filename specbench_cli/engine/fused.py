"""Whole decoder layers in one call for blocks of up to 128 tokens on a CPU (cpu.c's
`decode_layers`).

A one-token step of torch's eager forward spends ~30 small ops a layer outside the matrix
products, each a few microseconds of dispatch: on a small model that is as much time as reading
every weight. The fused step runs a range of layers in C over the engine's own weights and KV
cache (and the LM head), so a vanilla step and a method's verification blocks cost little beyond
the weight read, and a token gets the same bits alone or in any block the fused step takes.
Blocks where torch's products are clearly faster (many rows: oneDNN's blocked products), prefill
past 128 tokens, training (autograd), other devices and modules the engine does not own (an EAGLE
head, a Kangaroo adapter) keep the torch path.

Like the matrix-product kernels, the fused step is chosen by measurement: for each block size
it must be no slower than the torch path (within a noise margin: a tie goes to the step whose
blocks are bit-equal to one-token steps) over the model's own layers, timed once per machine and
model shape and cached beside the kernel choices ($SPECBENCH_HOME/kernels/fused.json).
`SPECBENCH_KERNELS=aten` turns it off; `SPECBENCH_FUSED=off` turns it off alone, `=on` takes it
for every block it can run without timing (tests, benchmarks: a choice that does not depend on a
timing race).

On a CPU with AMX tiles (Intel Sapphire Rapids and later) a bf16 model's products may run on them:
blocks of several tokens cost far less, a one-token step about the same or a little more. Which
is measured too: a whole one-token step and a 16-token block (all layers, as a step streams every
weight) with AMX off and on, and AMX is taken when it makes the block clearly faster while the
one-token step, vanilla's whole cost, stays within the noise margin. `SPECBENCH_AMX=on|off`
forces it. An engine's every block takes the same products either way, so exactness holds.
"""

from __future__ import annotations

import ctypes
import functools
import os
import statistics
import time

import torch

from ..errors import SpecbenchError
from . import kernels
from .batch import Segment as Rows
from .llama import holds_parts

FUSED_ENV = "SPECBENCH_FUSED"
AMX_ENV = "SPECBENCH_AMX"
MAX_ROWS = kernels.BUCKETS[-1]     # the largest block timed
# The largest block it may take: the 64-row timing stands for blocks up to this, so that the
# largest verification trees (Token Recycling's 81 nodes) are bit-equal to one-token steps too.
MAX_BLOCK = 2 * MAX_ROWS
TIMED_LAYERS = 4          # the layers the choice is timed over (enough to compare per layer)
TIMED_CONTEXT = 64
LAYER_FIELDS = ("in_norm", "post_norm", "qkv", "qkv_bias", "o", "o_bias", "gate_up",
                "gate_up_bias", "down", "down_bias")


class Shape(ctypes.Structure):
    _fields_ = [("hidden", ctypes.c_int64), ("inter", ctypes.c_int64), ("heads", ctypes.c_int64),
                ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("eps", ctypes.c_float), ("bf16", ctypes.c_int32)]


class Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in LAYER_FIELDS]


class Cache(ctypes.Structure):
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("capacity", ctypes.c_int64),
                ("bf16", ctypes.c_int64)]


class Segment(ctypes.Structure):
    _fields_ = [("cache", Cache), ("offset", ctypes.c_int64), ("rows", ctypes.c_int64),
                ("mask", ctypes.c_void_p)]


def pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def layer_struct(layer) -> Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj
    return Layer(*(pointer(t) for t in (
        layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
        qkv.weight, qkv.bias, attn.o_proj.weight, attn.o_proj.bias,
        gate_up.weight, gate_up.bias, mlp.down_proj.weight, mlp.down_proj.bias)))


def why_not(engine) -> str | None:
    """Why the fused step cannot run this engine (None: it can)."""
    if os.environ.get(kernels.ENV, "auto").lower() == "aten":
        return f"{kernels.ENV}=aten"
    if engine.device.type != "cpu" or engine.dtype not in (torch.float32, torch.bfloat16):
        return "CPU in fp32 or bf16 only"
    if engine.config.head_dim > 512:
        return "head_dim <= 512 only"
    for layer in engine.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for fused, first in ((attn.qkv_proj, attn.q_proj), (mlp.gate_up_proj, mlp.gate_proj)):
            if not (holds_parts(fused, first) and fused.weight.is_contiguous()):
                return "layers without fused q/k/v and gate/up products"
    if kernels.cpu_library() is None:
        return kernels._LIB["why"]
    return None


@functools.cache
def library():
    """cpu.c with the signatures of the functions this module calls."""
    lib = kernels.cpu_library()
    lib.decode_layers.restype = ctypes.c_int
    lib.decode_layers.argtypes = [
        ctypes.POINTER(Shape), ctypes.POINTER(Layer), ctypes.c_int64, ctypes.c_int64,
        ctypes.POINTER(Cache), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.decode_segments.restype = ctypes.c_int
    lib.decode_segments.argtypes = [
        ctypes.POINTER(Shape), ctypes.POINTER(Layer), ctypes.c_int64, ctypes.c_int64,
        ctypes.POINTER(Segment), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p]
    lib.product_f32_out.restype = ctypes.c_int
    lib.product_f32_out.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int32]
    lib.set_amx.argtypes = [ctypes.c_int]
    return lib


def amx_mode() -> str:
    mode = os.environ.get(AMX_ENV, "auto").lower()
    if mode not in ("auto", "on", "off"):
        raise SpecbenchError(f"{AMX_ENV}={mode!r}: choose auto, on or off")
    return mode


def can_use_amx(engine) -> bool:
    """Whether cpu.c would run this engine's products on AMX tiles if asked: bf16 weights and a
    CPU whose kernel grants this process AMX state."""
    if engine.dtype != torch.bfloat16:
        return False
    lib = library()
    was = lib.uses_amx()
    lib.set_amx(1)
    usable = bool(lib.uses_amx())
    lib.set_amx(was)
    return usable


class FusedLayers:
    """Runs `Engine.layers` for the block sizes in `rows` through cpu.c."""

    def __init__(self, engine, rows=range(1, MAX_BLOCK + 1), amx: bool = False):
        cfg = engine.config
        self.lib = library()
        self.lm_head = engine.lm_head.weight
        self.shape = Shape(cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps,
                           int(engine.dtype == torch.bfloat16))
        self.layers = (Layer * cfg.num_layers)(*(layer_struct(l) for l in engine.model.layers))
        # The first layer's fused weight: a later .to() or a replaced weight makes it stale.
        self.anchor = engine.model.layers[0].self_attn.qkv_proj.weight
        self.keep = [p for l in engine.model.layers for p in l.parameters()] + [self.lm_head]
        self.dtype = engine.dtype
        self.rows = frozenset(rows)
        self.amx = amx          # bf16 products on AMX tiles (cpu.c's switch, set before each call)

    def takes(self, engine, h: torch.Tensor, cache) -> bool:
        return (h.shape[1] in self.rows and h.shape[0] == 1 and h.dtype == self.dtype
                and cache is not None and cache.k.dtype in (torch.float32, torch.bfloat16)
                and not torch.is_grad_enabled()
                and getattr(engine.model.layers[0].self_attn.qkv_proj, "weight", None)
                is self.anchor)

    def logits(self, engine, h, any_rows: bool = False) -> torch.Tensor | None:
        """The LM head in fp32 through cpu.c for the blocks the fused layers take (None for the
        others): the same product for every block, so a token's logits are the same bits alone
        or in a block. fp32 sums even for bf16 weights, where torch's product would round them."""
        if engine.lm_head.weight is not self.lm_head:
            return None
        return self.product(h, self.lm_head, any_rows)

    def product(self, h, weight, any_rows: bool = False) -> torch.Tensor | None:
        """h (…, hidden) times weight (rows, hidden, the model's dtype) transposed, in fp32
        through cpu.c, for the block sizes the fused layers take (None for the others). Also a
        drafter's slice of the LM head (FR-Spec): torch's product streams such a slice several
        times slower than this one streams the whole head. `any_rows`: whatever the block size
        (joined sequences whose own blocks it takes: engine/batch.py)."""
        n = h.numel() // h.shape[-1]
        if (n not in self.rows and not any_rows) or h.dtype != self.dtype \
                or weight.dtype != self.dtype \
                or torch.is_grad_enabled() or not weight.is_contiguous():
            return None
        x = h.contiguous()
        rows, hidden = weight.shape
        out = torch.empty(h.shape[:-1] + (rows,), dtype=torch.float32)
        self.lib.set_amx(self.amx)
        self.lib.product_f32_out(x.data_ptr(), weight.data_ptr(), None, out.data_ptr(), n,
                                 rows, hidden, self.shape.bf16)
        return out

    def run(self, h, start: int, end: int, cache, offset: int, rope, mask):
        return self.run_segments(h, start, end, [Rows(cache, offset, h.shape[1], mask)], rope)

    def run_segments(self, h, start: int, end: int, segments, rope):
        """Layers [start, end) over the rows of several sequences side by side (engine/batch.py's
        Segments: each its cache, offset, rows and mask); one sequence is `run`."""
        for seg in segments:
            seg.cache.check_write(range(start, end), seg.offset, seg.rows)
        out = h.clone(memory_format=torch.contiguous_format)      # the caller's h stays
        cos, sin = (t.float().contiguous() for t in rope)
        masks = [None if seg.mask is None else seg.mask.contiguous() for seg in segments]
        table = (Segment * len(segments))(*(
            Segment(Cache(seg.cache.k.data_ptr(), seg.cache.v.data_ptr(), seg.cache.capacity,
                          int(seg.cache.k.dtype == torch.bfloat16)),
                    seg.offset, seg.rows, pointer(mask))
            for seg, mask in zip(segments, masks)))
        self.lib.set_amx(self.amx)
        rc = self.lib.decode_segments(self.shape, self.layers, start, end, table, len(segments),
                                      out.data_ptr(), cos.data_ptr(), sin.data_ptr())
        if rc != 0:
            raise RuntimeError(f"cpu.c decode_segments failed ({rc})")
        for seg in segments:
            for layer in range(start, end):
                seg.cache.lengths[layer] = seg.offset + seg.rows
        return out


def time_paths(engine, paths: dict, forward, sizes, repeats: int) -> dict:
    """{rows: {path: ms}}: forward(rows) with each of `paths` (name: the engine's fused step, or
    None for torch's modules) after TIMED_CONTEXT tokens of context, medians of `repeats`, the
    paths in turn within each repeat so that a shared machine's load drifts hit all alike."""
    out = {}
    with torch.inference_mode():
        for rows in sizes:
            step = forward(rows)
            times = {name: [] for name in paths}
            for i in range(repeats + 1):          # the first round warms up
                for name, path in paths.items():
                    engine.fused = path
                    start = time.perf_counter()
                    step()
                    if i:
                        times[name].append(time.perf_counter() - start)
            out[str(rows)] = {n: round(statistics.median(t) * 1e3, 3) for n, t in times.items()}
    engine.fused = None
    return out


def measure(engine, amx: bool = False, repeats: int = 7) -> dict:
    """{rows: {"torch": ms, "fused": ms}} over the first layers at every block-size bucket.
    amx: the fused step's products on AMX tiles."""
    layers = min(TIMED_LAYERS, engine.num_layers)
    cache = engine.new_cache(TIMED_CONTEXT + kernels.BUCKETS[-1], num_layers=engine.num_layers)

    def forward(rows):
        h = torch.randn(1, rows, engine.config.hidden_size).to(engine.dtype)

        def step():
            cache.lengths = [TIMED_CONTEXT] * engine.num_layers
            engine.layers(h, 0, layers, cache, TIMED_CONTEXT)
        return step
    return time_paths(engine, {"torch": None, "fused": FusedLayers(engine, amx=amx)}, forward,
                      kernels.BUCKETS, repeats)


AMX_ROWS = (1, 16)        # a one-token step (vanilla's cost) and a typical verification block


def measure_amx(engine, repeats: int = 7) -> dict:
    """{rows: {"vector": ms, "amx": ms}} for whole forwards of 1 and 16 tokens: every layer and
    the LM head, as a step streams every weight and AMX tiles stream them differently from
    vector loads."""
    cache = engine.new_cache(TIMED_CONTEXT + AMX_ROWS[-1])

    def forward(rows):
        ids = torch.randint(engine.config.vocab_size, (1, rows))

        def step():
            cache.lengths = [TIMED_CONTEXT] * engine.num_layers
            engine(ids, cache, TIMED_CONTEXT)
        return step
    paths = {"vector": FusedLayers(engine), "amx": FusedLayers(engine, amx=True)}
    return time_paths(engine, paths, forward, AMX_ROWS, repeats)


def choose_amx(engine, key: str, shape: str) -> tuple[bool, str, dict]:
    """Whether this engine's products run on AMX tiles: (use, why, timing). Taken when a 16-token
    block is clearly (MIN_GAIN) faster on them and a one-token step no more than MIN_GAIN slower:
    a choice that sped up verification by slowing vanilla would inflate every speedup."""
    mode = amx_mode()
    if not can_use_amx(engine):
        return False, "", {}
    if mode != "auto":
        return mode == "on", f"AMX {mode} ({AMX_ENV}={mode})", {}
    ms = kernels.cached_entry(kernels.kernels_home() / "fused.json", f"{key} | {shape} | AMX?",
                              valid_amx_timing, lambda: measure_amx(engine))
    one, block = ms["1"], ms[str(AMX_ROWS[-1])]
    use = (block["amx"] < (1 - kernels.MIN_GAIN) * block["vector"]
           and one["amx"] <= (1 + kernels.MIN_GAIN) * one["vector"])
    timed = ", ".join(f"{n}: {t['vector']:.2f}→{t['amx']:.2f}" for n, t in ms.items())
    return use, f"AMX {'on' if use else 'off'} (ms a forward, vector→AMX by tokens: {timed})", ms


def choose_fused(engine, key: str) -> dict:
    """Measure (or read from the kernel cache) and install the fused step where it is as fast as
    torch's path or faster (within kernels.MIN_GAIN: exactness decides a tie), with AMX products
    where choose_amx takes them.
    Returns {"used": bool, "why": str, "rows": {rows: {"torch": ms, "fused": ms}}, "amx": bool}."""
    engine.fused = None
    mode = os.environ.get(FUSED_ENV, "auto").lower()
    if mode not in ("auto", "on", "off"):
        raise SpecbenchError(f"{FUSED_ENV}={mode!r}: choose auto, on or off")
    amx_mode()                                  # a bad value is an error whatever else holds
    reason = f"{FUSED_ENV}=off" if mode == "off" else why_not(engine)
    if reason is not None:
        return {"used": False, "why": reason, "rows": {}, "amx": False}
    shape = fused_shape(engine)
    if mode == "on":        # no timing: AMX only when asked for
        amx = amx_mode() == "on" and can_use_amx(engine)
        engine.fused = FusedLayers(engine, amx=amx)
        return {"used": True, "rows": {}, "amx": amx,
                "why": f"{FUSED_ENV}=on: every block of 1–{MAX_BLOCK}" + ("; AMX on" if amx else "")}
    amx, amx_why, _ = choose_amx(engine, key, shape)
    shape += " amx" if amx else ""
    timed = kernels.cached_entry(kernels.kernels_home() / "fused.json", f"{key} | {shape}",
                                 valid_timing, lambda: measure(engine, amx))
    # A size goes to torch's path only where that is clearly faster: within the noise margin the
    # fused step keeps it, as its blocks are bit-equal to one-token steps and torch's are not.
    kept = [int(r) for r, ms in timed.items() if ms["torch"] >= (1 - kernels.MIN_GAIN) * ms["fused"]]
    # Each timed size stands for the sizes up to the next one (1, 2, 3-4, 5-8, …, 33-64, 65-128).
    rows = {n for n in range(1, MAX_BLOCK + 1) if kernels.bucket_of(n) in kept}
    if rows:
        engine.fused = FusedLayers(engine, rows, amx=amx)
    why = f"as fast or faster for blocks of {fmt_rows(rows)}" if rows else "slower here"
    return {"used": bool(rows), "rows": timed, "amx": amx and bool(rows),
            "why": why + (f"; {amx_why}" if amx_why else "")}


def fused_shape(engine) -> str:
    """What the fused step's timings depend on besides the machine (their kernel-cache key)."""
    cfg = engine.config
    return (f"fused layers {cfg.hidden_size}/{cfg.intermediate_size} h{cfg.num_heads}"
            f"/{cfg.num_kv_heads}x{cfg.head_dim} {str(engine.dtype).removeprefix('torch.')}")


def valid_amx_timing(timed) -> bool:
    """A cached AMX timing: the vector and AMX paths' ms at each of AMX_ROWS."""
    return isinstance(timed, dict) and all(
        kernels.timed_ms(timed.get(str(r)), ("vector", "amx")) for r in AMX_ROWS)


def valid_timing(timed) -> bool:
    """A cached timing: torch's and the fused step's ms at every block-size bucket."""
    return isinstance(timed, dict) and all(
        kernels.timed_ms(timed.get(str(b)), ("torch", "fused")) for b in kernels.BUCKETS)


def fmt_rows(rows) -> str:
    rows = sorted(rows)
    return "–".join(map(str, (rows[0], rows[-1]))) if rows == list(range(rows[0], rows[-1] + 1)) \
        else ", ".join(map(str, rows))
