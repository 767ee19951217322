"""LLMA: copy drafts from a reference text (here the prompt's own content), triggered by an
n-gram at the end of the generated output; the first occurrence in the reference wins."""

from __future__ import annotations

from .base import GREEDY, Decoding, Generation, Method, Option, draft_budget
from .verify import verify_chain


def first_occurrences(reference: list[int], max_n: int) -> dict[tuple, int]:
    """Each n-gram (n ≤ max_n) of the reference → index just past its first occurrence."""
    index: dict[tuple, int] = {}
    for n in range(1, max_n + 1):
        for i in range(len(reference) - n):     # an n-gram at the very end has nothing to copy
            index.setdefault(tuple(reference[i:i + n]), i + n)
    return index


class LLMA(Method):
    name = "llma"
    description = "LLMA: copy drafts from the reference text (the prompt), output n-gram trigger"
    # Paper defaults: trigger n = 1, copy 19 tokens.
    options = {"ngram": Option(1, int, "longest output n-gram used as the trigger", low=1),
               "num_draft": Option(19, int, "tokens copied from the reference per trigger", low=1)}
    budget = draft_budget("num_draft")

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        index = first_occurrences(prompt_ids, self.options["ngram"])
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        drafted = 0
        while not state.done:
            with state.phase("draft"):
                draft = self.draft(index, prompt_ids, state.new_tokens)
            drafted += len(draft)
            verify_chain(state, draft)
        return state.result(drafted=drafted)

    def draft(self, index: dict[tuple, int], reference: list[int], output: list[int]) -> list[int]:
        """What follows the reference's first occurrence of the output's longest trigger."""
        for n in range(min(self.options["ngram"], len(output)), 0, -1):   # longest first
            start = index.get(tuple(output[-n:]))
            if start is not None:
                return reference[start:start + self.options["num_draft"]]
        return []
