"""REST: retrieval-based drafting. The newest tokens (greedy root included) are looked up in a
datastore; the continuations of up to `max_hits` occurrences form a trie whose most frequent
nodes become a draft tree, verified like Medusa's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..datastore import SEPARATOR, Datastore
from ..engine import Engine
from .base import Generation, Method
from .verify import DecodeState, Tree, verify_chain, verify_tree


def trie_tree(conts: np.ndarray, budget: int) -> tuple[list[int], list[int]] | None:
    """The `budget - 1` most frequent prefixes of the continuation rows as a tree (root = node 0):
    returns (parents, tokens) or None when nothing is drafted.

    Rows are sorted once; at depth d a new prefix starts where a row differs from the previous
    one within its first d tokens, so every prefix count is a run length. A prefix is never
    rarer than its extensions and ties go to the shallower, so the top nodes are prefix-closed.
    Prefixes that reach the end of a turn (SEPARATOR) are not drafts."""
    rows, length = conts.shape
    conts = conts[np.lexsort(conts.T[::-1])]
    differs = conts[1:] != conts[:-1]
    first_diff = np.where(differs.any(1), differs.argmax(1), length)    # per row i ≥ 1
    first_diff = np.concatenate([[-1], first_diff])                     # row 0 starts everything
    is_sep = conts == SEPARATOR
    first_sep = np.where(is_sep.any(1), is_sep.argmax(1), length)
    nodes = []                                   # (-count, depth, row)
    for depth in range(1, length + 1):
        starts = np.flatnonzero(first_diff < depth)
        counts = np.diff(np.append(starts, rows))
        keep = first_sep[starts] >= depth
        nodes += zip((-counts[keep]).tolist(), [depth] * int(keep.sum()), starts[keep].tolist())
    if not nodes:
        return None
    nodes.sort()
    chosen = sorted(nodes[:budget - 1], key=lambda n: (n[1], n[2]))
    index = {(): 0}
    parents, tokens = [-1], [0]
    for _, depth, row in chosen:
        prefix = tuple(conts[row, :depth].tolist())
        index[prefix] = len(parents)
        parents.append(index[prefix[:-1]])
        tokens.append(prefix[-1])
    return parents, tokens


class REST(Method):
    name = "rest"
    description = "REST: drafts retrieved from a datastore (suffix array), verified as a tree"
    defaults = {"datastore": None, "num_draft": 64, "max_span": 16, "max_hits": 5000,
                "continuation": 10}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        store = self.require("datastore", "a datastore: --datastore PATH (build one with "
                                          "`specbench datastore build`)")
        if o["num_draft"] < 2 or o["max_span"] < 2:
            raise ValueError("rest: --rest-num-draft and --rest-max-span must be at least 2")
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

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        state = DecodeState(self.engine, prompt_ids, max_new_tokens, self.eos_ids)
        stats = {"rounds": 0, "hits": 0, "drafted": 0, "retrieval_seconds": 0.0}
        while not state.done:
            start = time.perf_counter()
            found = self.retrieve(state.tokens)        # ends with the pending (greedy root) token
            stats["retrieval_seconds"] += time.perf_counter() - start
            stats["rounds"] += 1
            if found is None:
                verify_chain(state, [])                # no hit: a plain one-token step
                continue
            parents, tokens = found
            stats["hits"] += 1
            stats["drafted"] += len(parents) - 1
            verify_tree(state, Tree(parents), tokens)
        return state.result(**stats)
