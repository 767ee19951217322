"""The recycling matrix and the static tree it is read through, shared by Token Recycling
(Luo et al., 2024) and SAM-Decoding's fallback (Hu et al., 2024): a V × k matrix holds, per
token, the top-k candidates the target's logits gave after it; a static tree, each node named
by its candidate ranks from the root, is expanded through the matrix from the pending token.
"""

from __future__ import annotations

import numpy as np
import torch

from .verify import Tree

# The paper's static tree (80 drafts besides the root, 6 deep; its appendix 8.1, Spec-Bench's
# "2.2.2"): each node, named by its candidate ranks from the root, gets children of ranks
# 0..n-1. Nodes of likely (low) ranks get more and deeper children: the matrix's columns are
# ordered by probability.
PAPER_TREE = {
    (): 8,
    (0,): 8, (1,): 4, (2,): 3, (3,): 2, (4,): 1, (5,): 1, (6,): 1, (7,): 1,
    (0, 0): 8, (0, 1): 3, (0, 2): 2, (0, 3): 1, (0, 4): 1, (0, 5): 1, (0, 6): 1, (0, 7): 1,
    (1, 0): 2, (1, 1): 1, (2, 0): 1, (3, 0): 1, (4, 0): 1, (5, 0): 1,
    (0, 0, 0): 5, (0, 0, 1): 2, (0, 0, 2): 1, (0, 0, 3): 1, (0, 0, 4): 1, (0, 1, 0): 1,
    (0, 2, 0): 1, (1, 0, 0): 1, (2, 0, 0): 1, (3, 0, 0): 1,
    (0, 0, 0, 0): 3, (0, 0, 0, 1): 1, (0, 0, 0, 2): 1, (0, 0, 1, 0): 1, (0, 1, 0, 0): 1,
    (1, 0, 0, 0): 1,
    (0, 0, 0, 0, 0): 2, (0, 0, 0, 1, 0): 1,
}
MAX_TOP_K = max(PAPER_TREE.values())       # 8: the template uses candidate ranks 0..7


def template_choices(num_draft: int, top_k: int) -> list[tuple[int, ...]]:
    """The template's `num_draft` cheapest nodes whose ranks are all below `top_k`, cost = depth
    + Σ ranks (one rank down counts like one step deeper; weighting ranks 2× or 3× changed the
    built-in MAT by ~1%). A parent always costs less than its child, so the cut is a tree."""
    nodes = [parent + (r,) for parent, n in PAPER_TREE.items() for r in range(n)]
    nodes = [c for c in nodes if max(c) < top_k]
    nodes.sort(key=lambda c: (len(c) + sum(c), len(c), c))
    return nodes[:num_draft]


class RecyclingTree:
    """The static tree's buffers for drafting: the nodes come ordered by depth, so each depth is
    one contiguous range filled by one gather from the matrix."""

    def __init__(self, choices: list[tuple[int, ...]]):
        self.tree = Tree.from_choices(choices)
        self.parents = np.array([max(p, 0) for p in self.tree.parents])
        self.ranks = np.array([c[-1] if c else 0 for c in self.tree.choices])
        depths = self.tree.depths
        self.layers = [(depths.index(d), len(depths) - depths[::-1].index(d))
                       for d in range(1, self.tree.depth + 1)]

    def draft(self, matrix: np.ndarray, root: int) -> list[int]:
        """Node tokens: the root, then depth by depth each node's rank-r candidate of its parent."""
        tokens = np.empty(len(self.tree), dtype=matrix.dtype)
        tokens[0] = root
        for lo, hi in self.layers:
            tokens[lo:hi] = matrix[tokens[self.parents[lo:hi]], self.ranks[lo:hi]]
        return tokens.tolist()


def recycle(matrix: np.ndarray, tokens: list[int], logits: torch.Tensor):
    """Overwrite each verified token's row with the top-k of the logits that followed it. A token
    fed twice keeps its last node's candidates (the paper's best-MAT choice), decided here so the
    result does not depend on how duplicate writes are ordered."""
    last = {t: i for i, t in enumerate(tokens)}
    nodes = torch.tensor(list(last.values()), device=logits.device)
    top = logits[nodes].topk(matrix.shape[1], dim=-1).indices
    matrix[list(last)] = top.cpu().numpy()
