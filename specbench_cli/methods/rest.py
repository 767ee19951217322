"""REST: retrieval-based drafting. The newest tokens (greedy root included) are looked up in a
datastore; the continuations of up to `max_hits` occurrences form a trie whose most frequent
nodes become a draft tree, verified like Medusa's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..drafters.datastore import SEPARATOR, Datastore, build_datastore
from ..engine import Engine
from .base import ADDON_FOLDER, GREEDY, Addon, Decoding, Generation, Method, Option, Statistic, \
    TargetAddon, node_budget
from .verify import Tree, verify_chain, verify_tree


def trie_tree(conts: np.ndarray, budget: int) -> tuple[list[int], list[int]] | None:
    """The `budget - 1` most frequent prefixes of the continuation rows as a tree (root = node 0):
    returns (parents, tokens) or None when nothing is drafted.

    Rows are sorted once; at depth d a new prefix starts at every row that differs from the
    previous one within its first d tokens, so a prefix's count is the length of its run of rows.
    All depths are counted at once on a (rows × depth) grid: the per-step cost must stay small
    next to one forward of the target. A prefix is never rarer than its extensions and ties go to
    the shallower, so the top nodes are prefix-closed. Prefixes that reach the end of a turn
    (SEPARATOR) are not drafts."""
    rows, length = conts.shape
    # Lexicographic row order in one sort: big-endian rows compared as raw bytes.
    conts = conts[np.argsort(conts.astype(">u4").view(f"V{4 * length}").ravel(), kind="stable")]
    differs = conts[1:] != conts[:-1]
    first_diff = np.concatenate([[-1], np.where(differs.any(1), differs.argmax(1), length)])
    is_sep = conts == SEPARATOR
    first_sep = np.where(is_sep.any(1), is_sep.argmax(1), length)
    depth = np.arange(1, length + 1)
    starts_run = (first_diff[:, None] < depth).T                # (depth, row): a prefix starts
    run_id = np.cumsum(starts_run, axis=1) - 1                 # per depth, the run of each row
    run_id += np.concatenate([[0], np.cumsum(run_id[:, -1] + 1)[:-1]])[:, None]
    counts = np.bincount(run_id.ravel())                       # per node: by depth, then row
    node_depth, node_row = np.nonzero(starts_run)              # the same order (= run ids)
    node = np.flatnonzero(first_sep[node_row] > node_depth)    # drafts stop before a turn ends
    if node.size == 0:
        return None
    # Most frequent first, ties to the shallower, then to the first row: one integer key.
    key = ((counts.max() - counts[node]) * length + node_depth[node]) * rows + node_row[node]
    chosen = np.sort(node[np.argsort(key)[:budget - 1]])       # by run id: parents first
    d, row = node_depth[chosen], node_row[chosen]
    # A node's parent is the run holding its row one depth up; the root for depth-1 nodes.
    tree_index = np.zeros(counts.size, dtype=np.int64)
    tree_index[chosen] = np.arange(1, chosen.size + 1)
    parents = np.where(d > 0, tree_index[run_id[np.maximum(d - 1, 0), row]], 0)
    return [-1] + parents.tolist(), [0] + conts[row, d].tolist()


def build_builtin_datastore(engine, tokenizer, data, folder, settings, console, **shared):
    build_datastore(tokenizer, data, folder, "builtin")


class REST(Method):
    name = "rest"
    description = "REST: drafts retrieved from a datastore (suffix array), verified as a tree"
    options = {
        "datastore": Option(None, str, "datastore folder (`specbench datastore build`)"),
        "num_draft": Option(64, int, "tree tokens, root included", low=2),
        "max_span": Option(16, int, "longest context suffix looked up", low=2),
        "max_hits": Option(5000, int, "most datastore occurrences whose continuations are "
                           "read", low=1),
        "continuation": Option(10, int, "tokens read after each occurrence (the tree's depth)",
                               low=1)}
    budget = node_budget("num_draft")
    statistics = (
        Statistic("hit rate", "hits", "rounds", 100, "%", "share of steps with a datastore match"),
        Statistic("retr ms", "retrieval_seconds", "rounds", 1000, "ms",
                  "mean retrieval time per step"))
    # On the built-in model a 64-token tree costs more than it gains on a CPU
    # (benchmarks/medusa_tree_forward.py: a small model's forward grows with every tree token).
    builtin_addon = Addon(settings={}, build=build_builtin_datastore, uses_teacher=False)
    builtin_options = {"datastore": ADDON_FOLDER, "num_draft": 32}
    target_addons = {"smollm2": TargetAddon({}, builtin_options)}     # run as on the built-in

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        store = self.require("datastore", "a datastore: --opt rest.datastore=PATH (build one with "
                                          "`specbench datastore build`)")
        if not isinstance(store, Datastore):
            store = Datastore(Path(store), tokenizer)
            o["datastore"] = str(o["datastore"])
        self.store = store

    def parameter_overhead(self) -> dict:
        return {"params": 0, "bytes": self.store.bytes, "tokens": self.store.n}

    def retrieve(self, context: list[int]):
        o = self.options
        match = self.store.longest_match(context, o["max_span"])
        if match is None:
            return None
        _, lo, hi = match
        return trie_tree(self.store.continuations(lo, hi, o["max_hits"], o["continuation"]),
                         o["num_draft"])

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        stats = {"rounds": 0, "hits": 0, "drafted": 0, "retrieval_seconds": 0.0}
        while not state.done:
            with state.phase("draft"):
                start = time.perf_counter()
                found = self.retrieve(state.tokens)    # ends with the pending (greedy root) token
                stats["retrieval_seconds"] += time.perf_counter() - start
                tree = Tree(found[0]) if found is not None else None
            stats["rounds"] += 1
            if found is None:
                verify_chain(state, [])                # no hit: a plain one-token step
                continue
            parents, tokens = found
            stats["hits"] += 1
            stats["drafted"] += len(parents) - 1
            verify_tree(state, tree, tokens)
        return state.result(**stats)
