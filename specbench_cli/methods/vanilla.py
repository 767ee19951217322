"""Vanilla greedy decoding: one token per target forward. The baseline every speedup divides by."""

from __future__ import annotations

from .base import Generation, Method
from .verify import DecodeState, verify_chain


class Vanilla(Method):
    name = "vanilla"
    description = "greedy autoregressive decoding, one token per forward (the baseline)"

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        state = DecodeState(self.engine, prompt_ids, max_new_tokens, self.eos_ids)
        while not state.done:
            verify_chain(state, [])
        return state.result()
