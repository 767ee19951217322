"""Greedy verification shared by every method: decoding state, EOS/length trimming, chains.

Invariant of `DecodeState`: the cache holds rows for every committed token but the last one
(`pending`), whose logits have not been computed yet. A verification step feeds `pending` plus
the drafts as one block, keeps the rows of what was accepted and commits the accepted drafts
plus the target's own next token (the bonus).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..engine import Engine
from .base import Generation

# Rows reserved past prompt + max_new_tokens for a block of drafts in flight (trees included).
DRAFT_HEADROOM = 128


class DecodeState:
    def __init__(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int,
                 eos_ids: set[int], prefill: Callable | None = None):
        """Prefill the prompt and commit the first token. `prefill(ids_tensor, cache)` may replace
        the plain forward (methods that keep extra state from the prompt); it returns logits."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        self.engine = engine
        self.eos_ids = eos_ids
        self.max_new_tokens = max_new_tokens
        self.prompt_len = len(prompt_ids)
        self.tokens = list(prompt_ids)
        self.accept_lengths: list[int] = []
        self.done = False
        self.cache = engine.cache(self.prompt_len + max_new_tokens + DRAFT_HEADROOM)
        ids = torch.tensor([prompt_ids], device=engine.device)
        logits = prefill(ids, self.cache) if prefill else engine(ids, self.cache, 0)
        self.offset = self.prompt_len          # cache rows filled
        self.commit([int(logits[0, -1].argmax())])

    @property
    def pending(self) -> int:
        return self.tokens[-1]

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def room(self) -> int:
        """How many more tokens may be committed."""
        return self.max_new_tokens - (len(self.tokens) - self.prompt_len)

    def commit(self, tokens: list[int]):
        """Append one step's tokens, cut at the first EOS and at max_new_tokens."""
        kept = []
        for t in tokens[:self.room]:
            kept.append(t)
            if t in self.eos_ids:
                self.done = True
                break
        self.tokens.extend(kept)
        self.accept_lengths.append(len(kept))
        if self.room <= 0:
            self.done = True

    def result(self, **stats) -> Generation:
        return Generation(self.new_tokens, self.accept_lengths, stats)


def accepted_prefix(draft: list[int], predicted: list[int]) -> int:
    """Length of the leading run where each draft equals the target's greedy choice before it."""
    n = 0
    while n < len(draft) and draft[n] == predicted[n]:
        n += 1
    return n


def verify_chain(state: DecodeState, draft: list[int], forward: Callable | None = None) -> int:
    """Verify a chain of drafts in one target forward; commit and return how many were accepted.

    `forward(ids_tensor, offset)` → logits may replace the full-model forward (Kangaroo runs only
    the deep layers); it must write the block's rows at `offset` into `state.cache`.
    """
    engine = state.engine
    draft = draft[:max(state.room - 1, 0)]  # never verify what could not be committed
    ids = torch.tensor([[state.pending] + draft], device=engine.device)
    logits = forward(ids, state.offset) if forward else engine(ids, state.cache, state.offset)
    predicted = logits[0].argmax(-1).tolist()
    n = accepted_prefix(draft, predicted)
    state.offset += 1 + n
    state.cache.truncate(state.offset)
    state.commit(draft[:n] + [predicted[n]])
    return n
