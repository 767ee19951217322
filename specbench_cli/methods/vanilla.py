"""Vanilla greedy decoding: one token per target forward. The baseline every speedup divides by."""

from __future__ import annotations

from .base import GREEDY, Decoding, Generation, Method
from .verify import verify_chain


class Vanilla(Method):
    name = "vanilla"
    description = "greedy autoregressive decoding, one token per forward (the baseline)"

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        # The top-1 minus top-2 logit gap behind every token: in half precision a method's
        # answer may flip where this gap is tiny (a near-tie), which the report tells apart
        # from a real mismatch.
        gaps: list[float] = []

        def forward(ids, cache, offset=0):
            logits, hidden = self.engine(ids, cache, offset, return_hidden=True)
            top2 = logits[0, -1].topk(2).values.tolist()
            gaps.append(round(top2[0] - top2[1], 5))
            return logits, hidden

        state = self.new_state(prompt_ids, max_new_tokens, decoding, prefill=forward)
        while not state.done:
            verify_chain(state, [], lambda ids, offset: forward(ids, state.cache, offset)[0])
        return state.result(top2_gap=gaps[:len(state.new_tokens)])
