"""What the frozen target says about a training batch: hidden states, its final features and
its next-token distribution on assistant tokens. Every trainer reads the target through one.

- `LiveTeacher` runs the target on each batch (exact, full distribution): `specbench train`.
- `CachedTeacher` runs it once over the whole corpus and keeps what the add-ons read (hidden
  states at the requested layers and the final features in fp16, the top-k of the
  distribution renormalised): a real target's add-ons are then trained one after another for
  the price of one pass, where each would otherwise pay the target's forward on every step.
  Soft cross-entropy against the top-k is the full one with the tail (a few % of the mass)
  dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine import Engine


@dataclass
class Batch:
    ids: torch.Tensor           # (b, n) right-padded with 0
    mask: torch.Tensor          # (b, n) bool: assistant tokens
    rows: list[int]             # the examples' indices (what a cache is keyed by)


@dataclass
class Distribution:
    """The teacher's next-token distribution at the batch's assistant positions, in row-major
    order: dense (m, V) probabilities, or the top-k (m, k) token ids with their probabilities."""
    probs: torch.Tensor
    ids: torch.Tensor | None = None

    def soft_cross_entropy(self, student_logits: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(student_logits.float(), dim=-1)
        if self.ids is not None:
            log_q = log_q.gather(-1, self.ids)
        return -(self.probs * log_q).sum(-1).mean()

    def acceptance(self, student_logits: torch.Tensor) -> torch.Tensor:
        """Expected acceptance of a draft sampled from the student: mean Σ_v min(p_v, q_v)
        (over the top-k only, for a cached teacher)."""
        q = torch.softmax(student_logits.float(), dim=-1)
        if self.ids is not None:
            q = q.gather(-1, self.ids)
        return torch.minimum(self.probs, q).sum(-1).mean()

    def top1(self) -> torch.Tensor:
        return self.probs.argmax(-1) if self.ids is None else self.ids[:, 0]

    def agreement(self, student_logits: torch.Tensor) -> float:
        return float((student_logits.argmax(-1) == self.top1()).float().mean())


class LiveTeacher:
    def __init__(self, engine: Engine):
        self.engine = engine

    def hidden(self, batch: Batch, layer: int) -> torch.Tensor:
        """The residual stream after the first `layer` layers (b, n, H)."""
        e = self.engine
        with torch.no_grad():
            return e.layers(e.embed(batch.ids.to(e.device)), 0, layer, None, 0)

    def features(self, batch: Batch) -> torch.Tensor:
        """The final normed hidden states (b, n, H)."""
        with torch.no_grad():
            return self.engine.norm(self.hidden(batch, self.engine.num_layers))

    def distribution(self, batch: Batch) -> Distribution:
        with torch.no_grad():
            logits = self.engine.logits(self.features(batch)[batch.mask.to(self.engine.device)])
            return Distribution(torch.softmax(logits.float(), dim=-1))


class CachedTeacher(LiveTeacher):
    """One pass over `examples` (train.data.Example), keeping hidden states after `layers`,
    the final features and the top-`top_k` distribution on assistant tokens."""

    def __init__(self, engine: Engine, examples, layers=(), top_k: int = 32, progress=None):
        super().__init__(engine)
        # Layers the target has (a smaller built-in in tests may lack some an add-on names;
        # its trainer then reads those from a live teacher).
        self.layers = sorted(layer for layer in set(layers) if 0 < layer < engine.num_layers)
        self.store: list[dict] = []
        task = progress.add_task("target pass (teacher cache)", total=len(examples)) \
            if progress else None
        e = engine
        with torch.no_grad():
            for ex in examples:
                ids = torch.tensor([ex.ids], device=e.device)
                mask = torch.tensor(ex.assistant, device=e.device)
                h, kept = e.forward_keeping(ids, self.layers)
                final = e.norm(h)[0]
                top = torch.softmax(e.logits(final[mask]).float(), dim=-1).topk(top_k, dim=-1)
                self.store.append({"hidden": {k: kept[k][0].half() for k in self.layers},
                                   "features": final.half(),
                                   "top_ids": top.indices.int(),     # half of int64's memory
                                   "top_probs": (top.values / top.values.sum(-1, keepdim=True))})
                if progress:
                    progress.update(task, advance=1)

    def padded(self, batch: Batch, pick) -> torch.Tensor:
        b, n = batch.ids.shape
        first = pick(self.store[batch.rows[0]])
        out = torch.zeros(b, n, first.shape[-1], dtype=torch.float32, device=first.device)
        for i, row in enumerate(batch.rows):
            t = pick(self.store[row])
            out[i, :t.shape[0]] = t.float()
        return out

    def hidden(self, batch: Batch, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise KeyError(f"teacher cache holds layers {self.layers}, not {layer}")
        return self.padded(batch, lambda s: s["hidden"][layer])

    def features(self, batch: Batch) -> torch.Tensor:
        return self.padded(batch, lambda s: s["features"])

    def distribution(self, batch: Batch) -> Distribution:
        parts = [self.store[row] for row in batch.rows]
        return Distribution(torch.cat([p["top_probs"] for p in parts]),
                            torch.cat([p["top_ids"] for p in parts]).long())
