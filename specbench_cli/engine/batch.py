"""Several sequences decoded together: each runs its method's own loop, and their target
forwards go through the model as one block.

Every method is written as a loop over one sequence (draft, then `engine(...)` to verify).
Rather than rewrite each as a state machine, `run_batch` runs one loop per sequence as a
coroutine (a greenlet: all on the one thread that runs torch, a switch costing a microsecond,
where OS threads cost ~0.2 ms against torch's OpenMP pool): a sequence runs until it needs the
target (`BatchEngine.layers` or `.logits`) and parks there. When every sequence still
decoding is parked, the parked requests that run the same layers are joined into one block —
their rows side by side, so each weight is read once for all of them — and each sequence gets
its own rows back. Attention is the one part that stays per sequence: each sequence has its own
KV cache (own length, own rollback), its own positions and its own chain or tree mask
(`Segments`). A sequence that finished leaves the batch; the others go on.

Drafting (an EAGLE head, a draft model, a lookup) runs per sequence, in turn. Because only one
sequence runs at a time and always in the same order, a batch gives the same tokens every time,
and a method's state shared across sequences (Token Recycling's matrix, SuffixDecoding's
global trie) is never touched by two at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from greenlet import getcurrent, greenlet

from .cache import KVCache
from .llama import Engine

@dataclass
class Segment:
    """One sequence's rows of a joined block: where they go in its cache and what they see."""
    cache: KVCache
    offset: int
    rows: int
    mask: torch.Tensor | None     # Engine.attention_mask's additive mask, None: causal/one row


class Segments(list):
    """Passed where a decoder layer takes its cache: the joined block's sequences in row order.
    Attention.forward hands each its own slice of q, k, v (Attention.attend)."""

    def attend(self, attention, layer: int, q, k, v) -> torch.Tensor:
        outs, start = [], 0
        for seg in self:
            part = slice(start, start + seg.rows)
            outs.append(attention.attend(q[:, :, part], k[:, :, part], v[:, :, part],
                                         seg.cache, layer, seg.offset, seg.mask))
            start += seg.rows
        return torch.cat(outs, dim=2)


class Stop(BaseException):
    """Thrown into a parked sequence when the batch is abandoned (another one failed)."""


class Sequence(greenlet):
    """One sequence's decoding loop. It runs only when the batch switches to it, and switches
    back when it parks (a request for the target) or returns."""

    def __init__(self, job: Callable):
        super().__init__(run=self.decode, parent=getcurrent())
        self.job = job
        self.request: tuple | None = None
        self.value = None
        self.cache: KVCache | None = None     # BatchEngine.cache's, kept across turns

    def decode(self):
        self.value = self.job()
        self.cache = None       # a continuous batch runs many sequences: free each one's cache

    def park(self, request: tuple):
        """Hand `request` to the batch; returns its result once the batch has served it."""
        self.request = request
        return self.parent.switch()


def current_sequence() -> Sequence | None:
    """The sequence running now; None outside a batch (calls then go straight through)."""
    running = getcurrent()
    return running if isinstance(running, Sequence) else None


class Batch:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.forwards = 0          # forward calls run: one per group of parked requests joined

    def run(self, jobs: list[Callable], width: int | None = None) -> list:
        """Every job decoded, at most `width` at once (all, by default): a job that finishes
        hands its place to the next waiting one (continuous batching)."""
        sequences = [Sequence(job) for job in jobs]
        answers = {seq: None for seq in sequences}
        waiting, live, width = list(sequences), [], width or len(sequences)
        try:
            with torch.inference_mode():
                while waiting or live:
                    for seq in live:       # run each until it parks or finishes
                        answer, answers[seq] = answers[seq], None
                        seq.switch(answer)           # its error is raised here
                    live = [s for s in live if not s.dead]
                    # Start the next ones now, in the same round: a sequence started a round
                    # later parks on its prefill's layers while the others park on their LM
                    # head, and the two would stay out of step, each round reading the weights
                    # twice.
                    while waiting and len(live) < width:
                        seq = waiting.pop(0)
                        seq.switch()
                        if not seq.dead:
                            live.append(seq)
                    answers.update(self.serve(live))
        finally:
            for seq in sequences:
                if seq and not seq.dead:     # started and parked: unwind its loop
                    try:
                        seq.throw(Stop())
                    except Stop:
                        pass
        return [seq.value for seq in sequences]

    def serve(self, parked: list[Sequence]) -> dict:
        """Run the parked requests, those of the same kind and layers joined into one block;
        each sequence's answer."""
        groups: dict[tuple, list[Sequence]] = {}
        for seq in parked:
            groups.setdefault(seq.request[0], []).append(seq)
        answers = {}
        for key, seqs in groups.items():
            requests = [s.request[1] for s in seqs]
            outs = self.joined_layers(key, requests) if key[0] == "layers" else \
                self.joined_logits(requests)
            self.forwards += 1
            for seq, out in zip(seqs, outs):
                answers[seq], seq.request = out, None
        return answers

    def joined_layers(self, key: tuple, requests: list[dict]) -> list[torch.Tensor]:
        """The requests' layers, joined. Those cpu.c's fused step would take alone go through
        it together (its rows are bit-equal to a forward of their own), the others through
        torch's modules together."""
        engine = self.engine
        fused = engine.fused
        alone = [fused is not None and fused.takes(engine, r["h"], r["cache"]) for r in requests]
        outs: list = [None] * len(requests)
        for kind in (True, False):
            chosen = [i for i, a in enumerate(alone) if a == kind]
            if chosen:
                parts = self.joined_group(key, [requests[i] for i in chosen], kind)
                for i, out in zip(chosen, parts):
                    outs[i] = out
        return outs

    def joined_group(self, key: tuple, requests: list[dict], through_fused: bool):
        engine = self.engine
        _, start, end = key
        if len(requests) == 1:          # alone: the same path as batch size 1
            return [engine.layers(start=start, end=end, **requests[0])]
        cos, sin, segments = [], [], Segments()
        for r in requests:
            n = r["h"].shape[1]
            rope = r["rope"] if r["rope"] is not None else \
                engine.rope_for(r["offset"], n, r["positions"])
            cos.append(rope[0])
            sin.append(rope[1])
            segments.append(Segment(r["cache"], r["offset"], n,
                                    engine.attention_mask(r["offset"], n, r["block_mask"])))
        h = torch.cat([r["h"] for r in requests], dim=1)
        cos, sin = torch.cat(cos), torch.cat(sin)
        if through_fused:
            h = engine.fused.run_segments(h, start, end, segments, (cos, sin))
        else:
            for i in range(start, end):
                h = engine.model.layers[i](h, cos, sin, segments, i, 0, None)
        return list(h.split([s.rows for s in segments], dim=1))

    def joined_logits(self, requests: list[torch.Tensor]) -> list[torch.Tensor]:
        """The LM head over all requests' rows in one product; through cpu.c's (exact per row,
        however many rows) when each request alone would take it."""
        rows = [h.shape[-2] for h in requests]
        fused = self.engine.fused
        h = torch.cat(requests, dim=-2)
        logits = None
        if fused is not None and all(n in fused.rows for n in rows):
            logits = fused.logits(self.engine, h, any_rows=True)
        if logits is None:
            logits = self.engine.logits(h)
        return list(logits.split(rows, dim=-2))


class BatchEngine:
    """The engine as a method sees it inside a batch: everything is the real engine's, except
    that the target's layers and LM head park the calling sequence (`Batch.serve` joins them)
    and `cache()` is the sequence's own."""

    def __init__(self, engine: Engine):
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def __setattr__(self, name, value):
        setattr(self._engine, name, value)

    def cache(self, capacity: int) -> KVCache:
        seq = current_sequence()
        if seq is None:
            return self._engine.cache(capacity)
        if seq.cache is None or seq.cache.capacity < capacity:
            seq.cache = None
            seq.cache = self._engine.new_cache(max(capacity, 256))
        seq.cache.reset()
        return seq.cache

    def layers(self, h, start, end, cache, offset, positions=None, block_mask=None, rope=None):
        seq = current_sequence()
        request = dict(h=h, cache=cache, offset=offset, positions=positions,
                       block_mask=block_mask, rope=rope)
        if seq is None or h.shape[0] != 1:
            return self._engine.layers(start=start, end=end, **request)
        return seq.park((("layers", start, end), request))

    def logits(self, h_final):
        seq = current_sequence()
        if seq is None:
            return self._engine.logits(h_final)
        return seq.park((("logits",), h_final))

    # The real engine's compositions, run with this object's layers and logits.
    def __call__(self, *args, **kwargs):
        return Engine.forward(self, *args, **kwargs)

    forward = __call__

    def forward_keeping(self, *args, **kwargs):
        return Engine.forward_keeping(self, *args, **kwargs)


def run_batch(engine: Engine, jobs: list[Callable], width: int | None = None) -> list:
    """Run each job (a callable that decodes one sequence with methods built on `BatchEngine`)
    with the others, at most `width` at once, their target forwards joined; the jobs' return
    values in order."""
    return Batch(engine).run(jobs, width)

