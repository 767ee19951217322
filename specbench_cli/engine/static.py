"""Static-shape decoding behind `--compile`: what a GPU needs to decode at its memory wall.

An eager batch-1 step of a 7B model on a GPU is bound by kernel launches (~25 a layer), not by
HBM. gpt-fast's answer is a static KV cache, attention over the cache's whole capacity under a
mask, and forwards compiled once per shape and replayed as CUDA graphs. Here:

- a block of n tokens is padded to the next of BUCKETS, so a handful of shapes covers every
  method's verification and drafting forwards (the padded rows see only themselves and are cut
  off; their cache rows lie past the committed length, where the next block overwrites them);
- keys and values are written by a tensor of row indices and attention reads every row under an
  additive mask, so no shape depends on the offset;
- each (layer range, bucket) is compiled once with torch.compile (`mode="reduce-overhead"`, i.e.
  CUDA graphs, on CUDA); blocks larger than the last bucket (prefill) stay eager.

Eager stays the default: on a CPU the fused C step (engine/fused.py) is faster, and on a GPU
`benchmarks/gpu_check.sh` measures both. `SPECBENCH_COMPILE_BACKEND` picks another torch.compile
backend (the tests use `aot_eager` to check the static-shape logic without code generation).
"""

from __future__ import annotations

import os

import torch

from . import kernels

BUCKETS = kernels.BUCKETS + (128,)
BACKEND_ENV = "SPECBENCH_COMPILE_BACKEND"


def bucket_of(n: int) -> int:
    return kernels.bucket_of(n, BUCKETS)


class StaticCache:
    """KVCache.write's interface over the whole capacity: a block's keys and values go to rows
    given as a tensor, and attention reads every row (the mask hides the uncommitted ones)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor):
        self.k, self.v, self.rows = k, v, rows

    def write(self, layer: int, offset: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer].index_copy_(2, self.rows, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, self.rows, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


class StaticLayers:
    """Runs `Engine.layers` for blocks of up to BUCKETS[-1] tokens as compiled static shapes."""

    def __init__(self, engine):
        self.engine = engine
        self.backend = os.environ.get(BACKEND_ENV, "inductor")
        cuda = engine.device.type == "cuda" and self.backend == "inductor"
        self.mode = "reduce-overhead" if cuda else None
        self.graphs: dict[tuple[int, int], object] = {}
        self.shapes: set[tuple[int, int, int]] = set()    # (start, end, bucket) compiled
        config = torch._dynamo.config
        # one recompile per bucket and cache capacity, for each layer range
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), 64))

    def takes(self, n: int, offset: int, cache) -> bool:
        return (cache is not None and n <= BUCKETS[-1] and not torch.is_grad_enabled()
                and offset + bucket_of(n) <= cache.capacity)

    def graph(self, start: int, end: int):
        if (start, end) not in self.graphs:
            layers = self.engine.model.layers

            def run(h, cos, sin, mask, rows, k, v):
                cache = StaticCache(k, v, rows)
                for i in range(start, end):
                    h = layers[i](h, cos, sin, cache, i, 0, mask)
                return h
            self.graphs[start, end] = torch.compile(run, backend=self.backend, mode=self.mode,
                                                    fullgraph=True, dynamic=False)
        return self.graphs[start, end]

    def mask(self, offset: int, n: int, size: int, capacity: int, block_mask, dtype):
        """(size, capacity) additive: the committed rows for all, the block's own part
        (`block_mask`, causal when None), each padded row itself alone."""
        device = self.engine.device
        mask = torch.full((size, capacity), float("-inf"), dtype=dtype, device=device)
        mask[:, :offset] = 0
        block = torch.ones(n, n, dtype=torch.bool, device=device).tril() if block_mask is None \
            else block_mask.to(device, torch.bool)
        mask[:n, offset:offset + n].masked_fill_(block, 0)
        pad = torch.arange(n, size, device=device)
        mask[pad, offset + pad] = 0
        return mask

    def run(self, h, start: int, end: int, cache, offset: int, rope, block_mask):
        n = h.shape[1]
        size = bucket_of(n)
        cache.check_write(range(start, end), offset, n)
        cos, sin = rope
        if size > n:
            h = torch.cat([h, h.new_zeros(1, size - n, h.shape[-1])], dim=1)
            cos = torch.cat([cos, cos[-1:].expand(size - n, -1)])
            sin = torch.cat([sin, sin[-1:].expand(size - n, -1)])
        mask = self.mask(offset, n, size, cache.capacity, block_mask, self.engine.attention_dtype)
        rows = torch.arange(offset, offset + size, device=h.device)
        self.shapes.add((start, end, size))
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        out = self.graph(start, end)(h, cos, sin, mask, rows, cache.k, cache.v)
        for layer in range(start, end):
            cache.lengths[layer] = offset + n
        # a copy: a CUDA graph's output buffer is overwritten by its next replay
        return out[:, :n].clone()
