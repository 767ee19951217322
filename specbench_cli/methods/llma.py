"""LLMA: copy drafts from a reference text (here the prompt's own content), triggered by an
n-gram at the end of the generated output; the first occurrence in the reference wins."""

from __future__ import annotations

from .base import Generation, Method
from .verify import DecodeState, verify_chain


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
    defaults = {"ngram": 1, "num_draft": 19}

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        n_max, num_draft = self.options["ngram"], self.options["num_draft"]
        index = first_occurrences(prompt_ids, n_max)
        state = DecodeState(self.engine, prompt_ids, max_new_tokens, self.eos_ids)
        drafted = 0
        while not state.done:
            output = state.new_tokens
            draft = []
            for n in range(min(n_max, len(output)), 0, -1):   # longest trigger first
                start = index.get(tuple(output[-n:]))
                if start is not None:
                    draft = prompt_ids[start:start + num_draft]
                    break
            drafted += len(draft)
            verify_chain(state, draft)
        return state.result(drafted=drafted)
