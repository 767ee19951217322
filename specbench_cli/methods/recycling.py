"""Token Recycling (Luo et al., 2024): the target's own top-k candidates, thrown away by plain
decoding, are kept per token in a V × k matrix; each step expands a static tree through that
matrix from the pending token (breadth first, one gather per depth) and verifies it in one
forward; then every tree token's row is overwritten with the top-k of its own logits.

Training-free, no datastore: the matrix starts at zeros and is carried over from one
generation to the next ("hot start"), so it keeps what earlier questions taught it.
"""

from __future__ import annotations

import numpy as np

from ..engine import Engine
from .base import GREEDY, Decoding, Generation, Method, Option, Statistic, draft_budget
from .matrix_tree import MAX_TOP_K, RecyclingTree, recycle, template_choices
from .verify import verify_tree

class TokenRecycling(Method):
    name = "recycling"
    description = ("Token Recycling: each token's past top-k candidates (a V×k matrix) drafted as "
                   "a static tree")
    options = {
        "top_k": Option(MAX_TOP_K, int, f"candidates kept per token, 1..{MAX_TOP_K} (the "
                        "matrix's columns; the template uses ranks below it)", low=1,
                        high=MAX_TOP_K),
        "num_draft": Option(80, int, "at most this many tree tokens besides the root: the paper's "
                            "80-node template, cheapest nodes first", low=1),
        "hot_start": Option(True, bool, "carry the matrix from one generation to the next "
                            "(false: every generation starts from zeros)")}
    budget = draft_budget("num_draft")
    statistics = (
        Statistic("hot roots", "known_roots", "rounds", 100, "%",
                  "share of steps whose root token already had recycled candidates"),)
    # On a CPU the built-in model's forward is compute-bound: each tree token adds ~3 MFLOP, so
    # 81 tokens cost ~4 one-token steps for MAT 2.5 (0.6x). 8 drafts (cost 1.5, MAT 1.6) came
    # out best of 2..80 in sweeps and in the cost model; all small trees are near break-even.
    builtin_options = {"num_draft": 8}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        self.tree = RecyclingTree(template_choices(o["num_draft"], o["top_k"]))
        self.reset()

    def reset(self):
        """Zeros: a token drafts nothing useful until it has been verified once."""
        vocab = self.engine.config.vocab_size
        self.matrix = np.zeros((vocab, self.options["top_k"]), dtype=np.int32)
        self.known: set[int] = set()        # tokens whose row holds real candidates

    def info(self) -> dict:
        return {"tree_tokens": len(self.tree.tree), "tree_depth": self.tree.tree.depth,
                "top_k": self.options["top_k"]}

    def parameter_overhead(self) -> dict:
        return {"params": 0, "bytes": self.matrix.nbytes}

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        if not self.options["hot_start"]:
            self.reset()
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        stats = {"rounds": 0, "known_roots": 0, "drafted": 0}
        seen = {}

        def forward(ids, offset, positions, block_mask):     # keeps every node's logits
            seen["logits"], hidden = self.engine(ids, state.cache, offset, positions=positions,
                                                 block_mask=block_mask, return_hidden=True)
            return seen["logits"], hidden

        while not state.done:
            root = state.pending
            with state.phase("draft"):
                tokens = self.tree.draft(self.matrix, root)
            stats["rounds"] += 1
            stats["known_roots"] += root in self.known
            stats["drafted"] += len(tokens) - 1
            verify_tree(state, self.tree.tree, tokens, forward)
            with state.phase("draft"):      # the update is this method's overhead too
                recycle(self.matrix, tokens, seen["logits"][0])
                self.known.update(tokens)
        return state.result(**stats)
