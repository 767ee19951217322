"""REST: suffix-array retrieval against brute force, trie trees, equality with vanilla, errors."""

import json
from collections import Counter

import numpy as np
import pytest

from specbench_cli.drafters.datastore import (SEPARATOR, Datastore, DatastoreError, build_datastore)
from specbench_cli.methods import METHODS
from specbench_cli.methods.rest import trie_tree
from specbench_cli.bench.prompts import build_prompt_ids

from test_methods import PROMPTS


class ArrayTokenizer:
    """Stands in for a tokenizer: each 'text' is a list of token ids already."""

    def __call__(self, batch, add_special_tokens=False):
        return {"input_ids": [list(ids) for ids in batch]}

    def get_vocab(self):
        return {"a": 0}


class FixedTokenizer(ArrayTokenizer):
    """Every text becomes the same given ids: builds a datastore of exactly these tokens."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, batch, add_special_tokens=False):
        return {"input_ids": [list(self.ids) for _ in batch]}


def store_from(tokens, tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text(json.dumps({"text": "x"}) + "\n")
    manifest = build_datastore(FixedTokenizer(tokens), [data], tmp_path / "ds")
    assert manifest["tokens"] == len(tokens) + 1        # the turn and its separator
    return Datastore(tmp_path / "ds")


def brute_force(tokens, context, max_span, min_span=2):
    """Longest suffix of context (≤ max_span, ≥ min_span) and the sorted start positions of
    what follows each occurrence."""
    for s in range(min(max_span, len(context)), min_span - 1, -1):
        q = context[-s:]
        hits = [i + s for i in range(len(tokens) - s + 1) if tokens[i:i + s] == q]
        if hits:
            return s, sorted(hits)
    return None


@pytest.mark.parametrize("seed,scan,fanout,memo", [(0, 256, 64, 1 << 16), (1, 4096, 64, 1 << 16),
                                                  (2, 8, 4, 3), (3, 3, 2, 1)])
def test_suffix_array_search_equals_brute_force(tmp_path, seed, scan, fanout, memo):
    rng = np.random.default_rng(seed)
    alphabet = rng.choice(np.arange(60000, 70100), size=4, replace=False)   # ids above 65,535
    tokens = rng.choice(alphabet, size=3000).tolist()
    store = store_from(tokens, tmp_path)
    # Small limits: wide ranges go through several sampled rounds; 4096: every range read whole.
    store.SCAN, store.FANOUT, store.MEMO_SIZE = scan, fanout, memo    # tiny memo: often emptied
    for trial in range(80):              # repeated short queries are answered from the memo
        if trial % 2:
            start = int(rng.integers(0, 2900))
            context = tokens[start:start + int(rng.integers(2, 20))]     # surely present
        else:
            context = rng.choice(alphabet, size=int(rng.integers(2, 20))).tolist()
        if trial % 7 == 0:               # separators end turns and are never matched
            context = context + [int(SEPARATOR)]
        want = brute_force(tokens, context, 16)
        got = store.longest_match(context, 16)
        if want is None:
            assert got is None
            continue
        length, lo, hi = got
        assert length == want[0]
        follows = sorted((store.n - store.suffixes[lo:hi].astype(np.int64)).tolist())
        assert follows == want[1]
        conts = store.continuations(lo, hi, 10_000, 3)
        for row, start in zip(conts, store.n - store.suffixes[lo:hi].astype(np.int64)):
            expect = (tokens + [int(SEPARATOR)] * 3)[start:start + 3]
            assert row.tolist() == expect


def test_trie_tree_takes_most_frequent_prefixes():
    conts = np.array([[5, 6, 7], [5, 6, 8], [5, 9, 1], [4, 4, 4]], dtype=np.uint32)
    parents, tokens = trie_tree(conts, 5)
    # counts: (5)=3, (5,6)=2, then count 1 ties go to the shallower, then the lexicographically
    # smaller: (4), (4,4) before (5,9). Budget 5 → root + 4 nodes, ordered by depth.
    assert tokens[1:] == [4, 5, 4, 6] and parents == [-1, 0, 0, 1, 2]
    sep = np.array([[5, int(SEPARATOR), 1]], dtype=np.uint32)
    assert trie_tree(sep, 8) == ([-1, 0], [0, 5])


def brute_force_tree(conts, budget):
    """Every drafted prefix by count, ties to the shorter then the smaller: the top budget - 1."""
    counts = Counter(tuple(row[:d]) for row in conts.tolist() for d in range(1, len(row) + 1)
                     if int(SEPARATOR) not in row[:d])
    return sorted(counts, key=lambda p: (-counts[p], len(p), p))[:budget - 1]


@pytest.mark.parametrize("seed", range(6))
def test_trie_tree_equals_brute_force_counting(seed):
    rng = np.random.default_rng(seed)
    rows, length, budget = int(rng.integers(1, 300)), int(rng.integers(1, 11)), \
        int(rng.integers(2, 80))
    conts = rng.choice([7, 8, 9, 70000, int(SEPARATOR)], p=[.4, .3, .15, .1, .05],
                       size=(rows, length)).astype(np.uint32)
    want = brute_force_tree(conts, budget)
    got = trie_tree(conts, budget)
    if not want:
        assert got is None
        return
    parents, tokens = got
    assert len(parents) == len(want) + 1 <= budget
    paths = [()]
    for parent, token in zip(parents[1:], tokens[1:]):
        assert 0 <= parent < len(paths)                  # parents come first: prefix-closed
        paths.append(paths[parent] + (token,))
    assert sorted(paths[1:]) == sorted(want)


def test_rest_equals_vanilla_with_a_datastore_of_its_own_outputs(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    outputs = []
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        outputs.append((ids, METHODS["vanilla"](engine, {2}).generate(ids, 60).tokens))
    corpus = tmp_path / "own.jsonl"
    # The model's own greedy continuations (decoded) plus unrelated text: drafts sometimes hit.
    corpus.write_text("".join(json.dumps({"text": tok.decode(out[:40])}) + "\n"
                              for _, out in outputs) + json.dumps({"text": "zzz yyy xxx"}) + "\n")
    build_datastore(tok, [corpus], tmp_path / "ds", "tiny")
    rest = METHODS["rest"](engine, {2}, tok, datastore=str(tmp_path / "ds"))
    hits = 0
    for ids, want in outputs:
        gen = rest.generate(ids, 60)
        assert gen.tokens == want
        hits += gen.stats["hits"]
        assert max(gen.accept_lengths) >= 1
    assert hits > 0
    assert rest.parameter_overhead()["bytes"] > 0


def test_datastore_errors(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatastoreError, match="empty corpus"):
        build_datastore(tok, [empty], tmp_path / "e")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"conversations": [{"from": "human", "value": "hello there"}]}))
    build_datastore(tok, [corpus], tmp_path / "ds")
    with pytest.raises(DatastoreError, match="built with another tokenizer"):
        Datastore(tmp_path / "ds", ArrayTokenizer())
    size = (tmp_path / "ds" / "tokens.u32").stat().st_size
    (tmp_path / "ds" / "tokens.u32").write_bytes(b"\x07" * size)    # right size, garbage ids
    with pytest.raises(DatastoreError, match="beyond any vocabulary: tokens.u32 is damaged"):
        Datastore(tmp_path / "ds", tok)
    (tmp_path / "ds" / "tokens.u32").write_bytes(b"\0" * 8)
    with pytest.raises(DatastoreError, match="tokens.u32 is truncated or damaged"):
        Datastore(tmp_path / "ds", tok)
    (tmp_path / "ds" / "tokens.u32").unlink()
    with pytest.raises(DatastoreError, match="tokens.u32 is missing"):
        Datastore(tmp_path / "ds", tok)
    with pytest.raises(DatastoreError, match="no manifest.json"):
        Datastore(tmp_path / "nothing", tok)
    with pytest.raises(ValueError, match="rest needs a datastore"):
        METHODS["rest"](engine, {2}, tok)
