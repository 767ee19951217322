"""A preallocated key/value cache written by index, never grown by concatenation.

Rows are token positions. Every layer keeps its own filled length because a layer-range method
(Kangaroo) advances the shallow layers ahead of the deep ones; writes must stay contiguous.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, 1, n_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * n_layers

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def check_write(self, layers, offset: int, n: int):
        """Writes stay contiguous and inside the capacity (the fused and compiled paths write
        the rows themselves and check here first)."""
        for layer in layers:
            if offset > self.lengths[layer]:
                raise RuntimeError(f"cache write at row {offset} leaves a gap (layer {layer} "
                                   f"holds {self.lengths[layer]} rows)")
        if offset + n > self.capacity:
            raise RuntimeError(f"cache overflow: {offset + n} rows needed, capacity "
                               f"{self.capacity}")

    def write(self, layer: int, offset: int, k: torch.Tensor, v: torch.Tensor):
        """Store a block of keys/values at rows [offset, offset + n); return all rows up to its end."""
        end = offset + k.shape[2]
        self.check_write((layer,), offset, k.shape[2])
        self.k[layer, :, :, offset:end] = k
        self.v[layer, :, :, offset:end] = v
        self.lengths[layer] = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def truncate(self, length: int, layers: range | None = None):
        """Forget every row from `length` on (rejected drafts)."""
        for layer in layers if layers is not None else range(len(self.lengths)):
            self.lengths[layer] = min(self.lengths[layer], length)

    def keep_rows(self, rows: torch.Tensor | list[int], dst: int, layers: range | None = None):
        """Move the given rows (ascending, all >= dst) to rows [dst, dst + len(rows)) and cut there.

        This is the tree compaction: the accepted path's nodes were written somewhere inside the
        verified block and must become the contiguous continuation of the committed prefix.
        """
        layers = layers if layers is not None else range(len(self.lengths))
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        n = rows.numel()
        sl = slice(layers.start, layers.stop)
        # Advanced indexing copies before the write, so overlapping source and target are safe.
        self.k[sl, :, :, dst:dst + n] = self.k[sl, :, :, rows]
        self.v[sl, :, :, dst:dst + n] = self.v[sl, :, :, rows]
        for layer in layers:
            self.lengths[layer] = dst + n

    def reset(self):
        self.lengths = [0] * len(self.lengths)
