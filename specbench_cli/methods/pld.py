"""Prompt lookup decoding: draft by copying what followed the latest n-gram elsewhere in the
prompt or the output so far (n = 3, 2, 1, earliest occurrence first)."""

from __future__ import annotations

import torch

from .base import GREEDY, Decoding, Generation, Method, Option, draft_budget
from .verify import verify_chain


def lookup(tokens: torch.Tensor, max_ngram: int, num_draft: int) -> list[int]:
    """The tokens that followed the earliest earlier occurrence of the longest matching suffix."""
    length = tokens.numel()
    for n in range(min(max_ngram, length - 1), 0, -1):
        suffix = tokens[-n:]
        windows = tokens[:-1].unfold(0, n, 1)     # drop the last token: a match needs a follower
        hits = (windows == suffix).all(dim=1).nonzero()
        if hits.numel():
            start = int(hits[0]) + n
            return tokens[start:start + num_draft].tolist()
    return []


class PromptLookup(Method):
    name = "pld"
    description = "prompt lookup decoding: copy drafts from earlier n-gram matches (chain)"
    options = {"max_ngram": Option(3, int, "longest n-gram looked up (tries n, n-1, ..., 1)",
                                   low=1),
               "num_draft": Option(10, int, "tokens drafted per lookup", low=1)}
    budget = draft_budget("num_draft")

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        drafted = 0
        while not state.done:
            with state.phase("draft"):
                draft = lookup(torch.tensor(state.tokens), self.options["max_ngram"],
                               self.options["num_draft"])
            drafted += len(draft)
            verify_chain(state, draft)
        return state.result(drafted=drafted)
