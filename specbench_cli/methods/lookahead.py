"""Lookahead decoding (Fu et al. 2024): Jacobi iterations over a 2-D window of guesses produce
n-grams into a pool; each step, in ONE forward with a combined attention mask, runs the window
(the lookahead branch) and verifies, as a tree, the pool's n-grams that start with the pending
token (the verification branch).

The window is W columns by N-1 levels (rows). Column 0 of level 0 is the pending token itself
(the tree's root, at position `offset`); the token at (level l, column j) sits at position
offset + l + j and sees level 0's columns 0..j and its own column in levels 1..l. So every
column reads as a sequence: level 0 up to j, then down the column. Each step the last level's
outputs become a new level; once N-1 levels exist, column j yields the n-gram (level 0..N-2 at
j, new output at j), keyed by its first token, and the oldest level is dropped. With one token
committed per step the window keeps every guess at its absolute position.

Exactness never depends on the window: the tree's nodes see only the prefix and their own
ancestors, the window's rows are dropped with the rejected nodes, and what is committed is what
the target predicts along the accepted path.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch

from ..errors import SpecbenchError
from .base import GREEDY, Budget, Decoding, Generation, Method, Option, Statistic
from .verify import DRAFT_HEADROOM, DecodeState, Tree, verify_tree


@lru_cache(maxsize=64)
def window_mask(levels: int, width: int) -> np.ndarray:
    """Who sees whom in the window, over grid cells g = level * width + column, cell 0 being the
    pending token: (l, j) sees level 0's columns <= j and column j in levels 1..l."""
    level, column = np.divmod(np.arange(levels * width), width)
    sees_level0 = (level[None, :] == 0) & (column[None, :] <= column[:, None])
    sees_own_column = ((column[None, :] == column[:, None]) & (level[None, :] >= 1)
                       & (level[None, :] <= level[:, None]))
    return sees_level0 | sees_own_column


def combined_mask(tree_mask: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """The tree's mask with the window's cells 1.. appended after its n nodes; window cell 0 is
    the tree's root. The two branches never see each other (only the root is shared)."""
    n, m = tree_mask.shape[0], window.shape[0] - 1
    mask = torch.zeros(n + m, n + m, dtype=torch.bool)
    mask[:n, :n] = tree_mask
    mask[n:, 0] = torch.from_numpy(window[1:, 0])
    mask[n:, n:] = torch.from_numpy(window[1:, 1:])
    return mask


def candidate_trie(candidates: list[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """The candidates merged on shared prefixes into a tree under the root: (parents, tokens),
    parents before children, tokens[0] a placeholder for the root."""
    parents, tokens, node_of = [-1], [0], {}
    for ngram in candidates:
        node = 0
        for token in ngram:
            if (node, token) not in node_of:
                node_of[node, token] = len(parents)
                parents.append(node)
                tokens.append(token)
            node = node_of[node, token]
    return parents, tokens


def add_ngram(pool: dict, key: int, ngram: tuple[int, ...], guess: int):
    """Keep at most `guess` n-grams per key, newest first, no duplicates (the official LRU)."""
    kept = [ngram] + [g for g in pool.get(key, ()) if g != ngram]
    pool[key] = kept[:guess]


class Window:
    """The lookahead branch: `levels[0]` holds level 0's columns 1.. (column 0 is the pending
    token), `levels[l]` level l's columns 0.., all lists of token ids."""

    def __init__(self, prompt_ids: list[int], level: int, width: int):
        self.level, self.width = level, width
        # Start-up grows one level a step and drops each level's first column as the pending
        # token advances, so level 0 starts N-2 columns wider (official layout). Its guesses are
        # prompt tokens drawn by a fixed seed: deterministic, and words the answer may repeat.
        rng = random.Random(0)
        self.levels = [[rng.choice(prompt_ids) for _ in range(width - 1 + level - 2)]]

    @property
    def full(self) -> bool:
        return len(self.levels) == self.level - 1

    def cells(self, pending: int) -> tuple[list[int], list[int]]:
        """Token and position offset (from the pending token's) of every grid cell, cell 0 first."""
        rows = [[pending] + self.levels[0]] + self.levels[1:]
        return ([t for row in rows for t in row],
                [lev + col for lev, row in enumerate(rows) for col in range(len(row))])

    def update(self, pending: int, outputs: list[int], pool: dict, guess: int):
        """Fold the last level's greedy outputs (one per column) into the window; once full,
        first collect each column's n-gram into the pool."""
        if not self.full:
            self.levels = [row[1:] for row in self.levels] + [outputs[1:]]
            return
        rows = [[pending] + self.levels[0]] + self.levels[1:] + [outputs]
        for column in range(len(outputs)):
            add_ngram(pool, rows[0][column], tuple(row[column] for row in rows[1:]), guess)
        self.levels = [rows[1][1:]] + rows[2:]


def block_tokens(level: int, window: int, guess: int) -> int:
    """Most tokens one forward feeds: the root, the largest window (start-up included) and
    `guess` full n-grams."""
    cells = max(k * (window + level - 1 - k) for k in range(1, level)) - 1
    return 1 + cells + guess * (level - 1)


def shape_within(budget: int, options: dict) -> dict:
    """The largest window and pool within `budget` tokens a forward, no larger than `options`'
    level, window and guess, verifying at least one n-gram; of equal blocks, the deeper
    n-grams, then a window about as wide as the pool (the window is what fills the pool)."""
    shapes = [(block_tokens(n, w, g), n, min(w, g), g, w)
              for n in range(2, options["level"] + 1) for w in range(1, options["window"] + 1)
              for g in range(1, max(options["guess"], 1) + 1)]
    fitting = [s for s in shapes if s[0] <= budget] or [min(shapes)]
    _, level, _, guess, window = max(fitting)
    return {"level": level, "window": window, "guess": guess}


class Lookahead(Method):
    name = "lookahead"
    description = "lookahead decoding: Jacobi-window n-grams verified as a tree in the same forward"
    options = {"level": Option(5, int, "n-gram size N (the window has N-1 levels)", low=2),
               "window": Option(7, int, "window width W (columns of Jacobi guesses)", low=1),
               "guess": Option(7, int, "most pool n-grams verified per step (G)", low=0)}
    budget = Budget("level, window, guess", "the largest window and pool within the budget",
                    shape_within, lambda o: block_tokens(o["level"], o["window"], o["guess"]))
    # The report's "draft len" already shows the pool tokens verified per step (`drafted`).
    statistics = (Statistic("pool hit", "hits", "rounds", 100, "%",
                            "share of steps with at least one pool n-gram starting with the "
                            "pending token"),)
    # Built-in sizes from sweeps (MAT is deterministic, timings on a loaded 2-core CPU noisy):
    # the model's forward costs ~1.2x a one-token step at 9 tokens, ~1.35x at 14, ~2.3x at
    # Spec-Bench's 56, while MAT only grows from 1.26 (3, 4, 2) to 1.40 (5, 7, 7) there, so the
    # smallest block that still keeps 2-token n-grams does best (about 1.0-1.2x vs 0.7-0.8x).
    builtin_options = {"level": 3, "window": 4, "guess": 2}

    def __init__(self, engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        if self.max_block() > DRAFT_HEADROOM:
            raise SpecbenchError(f"lookahead: a block of {self.max_block()} tokens exceeds the "
                                 f"{DRAFT_HEADROOM} the cache reserves; lower level, window or guess")

    def max_block(self) -> int:
        return block_tokens(self.options["level"], self.options["window"], self.options["guess"])

    def info(self) -> dict:
        return {"max_block_tokens": self.max_block()}

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        o = self.options
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        window, pool = Window(prompt_ids, o["level"], o["window"]), {}
        stats = {"rounds": 0, "hits": 0, "drafted": 0}
        while not state.done:
            pending = state.pending
            with state.phase("draft"):
                # Never verify what could not be committed: room - 1 drafts at most.
                cut = max(state.room - 1, 0)
                candidates = [g[:cut] for g in pool.get(pending, ())] if cut else []
                parents, tokens = candidate_trie(candidates)
                tree = Tree(parents)
                cells, offsets = window.cells(pending)
            outputs = []
            forward = self.combined_forward(state, cells, offsets, len(window.levels), outputs)
            verify_tree(state, tree, tokens, forward)
            # The block fed was the tree plus the window: the cost model must see both.
            state.block_sizes[-1] += len(cells) - 1
            stats["rounds"] += 1
            stats["hits"] += len(parents) > 1
            stats["drafted"] += len(parents) - 1
            with state.phase("draft"):
                window.update(pending, outputs, pool, o["guess"])
        return state.result(**stats)

    def combined_forward(self, state: DecodeState, cells: list[int], offsets: list[int],
                         levels: int, outputs: list[int]):
        """verify_tree's forward with the window's cells 1.. appended after the tree's nodes; the
        last level's greedy outputs go to `outputs`. The window's cache rows lie past the tree's
        and are dropped with the rejected nodes."""
        engine, width = self.engine, len(cells) // levels
        grid = window_mask(levels, width)
        extra_ids = torch.tensor([cells[1:]], dtype=torch.long, device=engine.device)
        extra_positions = torch.tensor(offsets[1:], dtype=torch.long, device=engine.device)

        def forward(ids, offset, positions, block_mask):
            n = ids.shape[1]
            logits, hidden = engine(torch.cat([ids, extra_ids], dim=1), state.cache, offset,
                                    positions=torch.cat([positions, offset + extra_positions]),
                                    block_mask=combined_mask(block_mask.cpu(), grid),
                                    return_hidden=True)
            # Cell 0 is the root (block index 0); cell g > 0 sits at block index n + g - 1.
            cells_of_last_level = range((levels - 1) * width, levels * width)
            last = [n + g - 1 if g else 0 for g in cells_of_last_level]
            outputs.extend(logits[0, last].argmax(-1).tolist())
            return logits[:, :n], hidden[:, :n]
        return forward
