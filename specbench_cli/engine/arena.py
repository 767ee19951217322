"""The weights of a CPU engine in one buffer, in the order a step reads them, on huge pages.

A decoding step streams every weight once. Read from ~270 separate tensors, each product starts
a new stream on new 4 KiB pages: the prefetchers ramp up again and the TLB misses once a page.
Laid out back to back in step order, in memory advised for transparent huge pages (2 MiB), the
whole step is one sequential read: 20-25% faster products measured on SmolLM2's bf16 shapes
(2-core AMD EPYC, side by side, benchmarks/engine_step.py). The bandwidth probe of `specbench
profile` reads the same kind of memory, so the floor it reports is no easier to reach.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
from torch import nn

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14          # Linux
ALIGN = 64                  # bytes; every tensor starts on a cache line


def huge_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of `nbytes`, 2 MiB aligned and advised for transparent huge
    pages before its first touch (where the OS has them; plain pages elsewhere)."""
    raw = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)
    start = (-raw.data_ptr()) % HUGE_PAGE
    buf = raw[start:start + nbytes]
    if sys.platform.startswith("linux") and nbytes >= HUGE_PAGE:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise(buf.data_ptr(), nbytes - nbytes % HUGE_PAGE, MADV_HUGEPAGE)  # a hint only
    return buf


def step_order(engine) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) in the order a forward reads them, fused products in place of
    their parts; the embedding only where it is also the LM head."""
    order = []
    for layer in engine.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        order += [(layer.input_layernorm, "weight")]
        for linear in (attn.qkv_proj, attn.o_proj):
            order += [(linear, "weight")] + ([(linear, "bias")] if linear.bias is not None else [])
        order += [(layer.post_attention_layernorm, "weight")]
        for linear in (mlp.gate_up_proj, mlp.down_proj):
            order += [(linear, "weight")] + ([(linear, "bias")] if linear.bias is not None else [])
    order += [(engine.model.norm, "weight"), (engine.lm_head, "weight")]
    return order


def available_memory() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def pack_weights(engine, pack: bool | None = None) -> str:
    """Move the engine's weights into one huge-page buffer in step order (CPU, after
    Engine.fuse_projections); the values do not change, and the old storage is freed as each is
    replaced (file-mapped weights go back to the page cache). `pack` None: only where the copy
    fits in a third of the free memory. Returns what was done, for run.json and the profile."""
    if engine.device.type != "cpu" or engine.model.layers[0].self_attn.qkv_proj is None:
        return "not packed (CPU engines only)"
    order = step_order(engine)
    sizes = [(getattr(m, name).nbytes + ALIGN - 1) // ALIGN * ALIGN for m, name in order]
    total = sum(sizes)
    free = available_memory()
    if pack is False or (pack is None and (free is None or 3 * total > free)):
        return "not packed (" + ("asked" if pack is False else
                                 f"{total >> 20} MiB does not fit a third of the free memory") + ")"
    buf = huge_buffer(total)
    tied = engine.lm_head.weight is engine.model.embed_tokens.weight
    start = 0
    for (module, name), size in zip(order, sizes):
        old = getattr(module, name)
        new = buf[start:start + old.nbytes].view(old.dtype).view(old.shape)
        new.copy_(old)
        setattr(module, name, nn.Parameter(new, requires_grad=False))
        start += size
    if tied:
        engine.model.embed_tokens.weight = engine.lm_head.weight
    for layer in engine.model.layers:     # the parts of each fused product: views of it again
        layer.self_attn.qkv_proj.share()
        layer.mlp.gate_up_proj.share()
    return f"packed: {total >> 20} MiB in step order, huge pages advised"
