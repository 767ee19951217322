"""Lookahead decoding: the window's mask and bookkeeping, the pool, the candidate trie, equality
with vanilla on three architectures (limits and EOS included), and option errors."""

import numpy as np
import pytest
import torch

from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.methods.lookahead import (Window, add_ngram, candidate_trie, combined_mask,
                                             window_mask)
from specbench_cli.methods.verify import GREEDY, DecodeState, Tree, verify_tree
from specbench_cli.bench.prompts import build_prompt_ids

from conftest import make_model_folder
from specbench_cli.engine.load import load_engine
from test_methods import PROMPTS

TEXTS = PROMPTS + ["the the the the the the the the"]
# Spec-Bench's sizes, a small window, and the smallest (2-grams from a one-column window).
OPTIONS = [{}, {"level": 3, "window": 4, "guess": 3}, {"level": 2, "window": 1, "guess": 1}]


def test_window_mask_is_level0_prefix_plus_own_column():
    m = window_mask(3, 3)           # cells: level * 3 + column
    assert m.shape == (9, 9)
    # (2, 1) = cell 7 sees level 0's columns 0, 1 and column 1 of levels 1, 2.
    assert np.flatnonzero(m[7]).tolist() == [0, 1, 4, 7]
    # (1, 0) = cell 3 sees the pending token and itself; (0, 2) level 0's columns 0..2.
    assert np.flatnonzero(m[3]).tolist() == [0, 3]
    assert np.flatnonzero(m[2]).tolist() == [0, 1, 2]


def test_combined_mask_keeps_the_branches_apart():
    tree = Tree([-1, 0, 1, 0])
    mask = combined_mask(tree.mask, window_mask(2, 2))      # 4 nodes + 3 window cells
    assert mask.shape == (7, 7)
    assert torch.equal(mask[:4, :4], tree.mask) and not mask[:4, 4:].any()
    assert not mask[4:, 1:4].any()                           # the window sees only the root
    assert mask[4:, 0].all()
    assert mask[4:, 4:].tolist() == [[True, False, False],   # (0, 1)
                                     [False, True, False],   # (1, 0)
                                     [True, False, True]]    # (1, 1)


def test_candidate_trie_merges_shared_prefixes():
    parents, tokens = candidate_trie([(5, 6, 7), (5, 6, 8), (9, 6), (5,)])
    assert parents == [-1, 0, 1, 2, 2, 0, 5]
    assert tokens == [0, 5, 6, 7, 8, 9, 6]
    assert candidate_trie([]) == ([-1], [0])


def test_pool_keeps_newest_first_without_duplicates():
    pool = {}
    for ngram in [(1, 2), (3, 4), (1, 2), (5, 6), (7, 8)]:
        add_ngram(pool, 9, ngram, 3)
    assert pool == {9: [(7, 8), (5, 6), (1, 2)]}


def test_window_grows_then_collects_and_shifts():
    w = Window([10, 11, 12], level=4, width=3)
    assert len(w.levels[0]) == 4 and set(w.levels[0]) <= {10, 11, 12}
    w.levels = [[1, 2, 3, 4]]
    assert w.cells(0) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    pool = {}
    w.update(0, [20, 21, 22, 23, 24], pool, 7)            # grow: every level drops column 0
    assert w.levels == [[2, 3, 4], [21, 22, 23, 24]] and pool == {}
    assert w.cells(9)[1] == [0, 1, 2, 3, 1, 2, 3, 4]
    w.update(9, [30, 31, 32, 33], pool, 7)
    assert w.levels == [[3, 4], [22, 23, 24], [31, 32, 33]] and w.full and pool == {}
    w.update(8, [40, 41, 42], pool, 7)                     # full: collect, then shift
    assert pool == {8: [(22, 31, 40)], 3: [(23, 32, 41)], 4: [(24, 33, 42)]}
    assert w.levels == [[23, 24], [31, 32, 33], [40, 41, 42]]


def test_level_two_collects_from_the_first_step():
    w = Window([10], level=2, width=3)
    assert w.full and w.levels == [[10, 10]]
    pool = {}
    w.update(5, [6, 7, 8], pool, 7)
    assert pool == {5: [(6,)], 10: [(8,), (7,)]} and w.levels == [[7, 8]]


@pytest.mark.parametrize("levels", [1, 3])
def test_window_outputs_equal_plain_forwards_of_each_column(tiny_engine, levels):
    """The mask and positions make cell (l, j) predict what a plain causal forward of the prefix,
    level 0's columns 0..j and column j's levels 1..l predicts, while a tree rides along."""
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    method = METHODS["lookahead"](engine, {2}, level=4, window=3)
    state = DecodeState(engine, ids, 40, {2}, GREEDY)
    window = Window(ids, 4, 3)
    window.levels = [[7, 8, 9, 10]] if levels == 1 else [[7, 8], [11, 12, 13], [14, 15, 16]]
    cells, offsets = window.cells(state.pending)
    outputs = []
    tree = Tree([-1, 0, 1])
    verify_tree(state, tree, [0, 40, 41], method.combined_forward(state, cells, offsets, levels,
                                                                  outputs))
    width = len(cells) // levels
    rows = [cells[r * width:(r + 1) * width] for r in range(levels)]
    for column in range(width):
        seq = ids + rows[0][:column + 1] + [row[column] for row in rows[1:]]
        cache = engine.new_cache(len(seq) + 1)
        want = int(engine(torch.tensor([seq]), cache, 0)[0, -1].argmax())
        assert outputs[column] == want, column


def engines():
    found = {}

    def get(variant, tmp_path_factory):
        if variant not in found:
            folder = make_model_folder(tmp_path_factory.mktemp(variant) / "m", variant)
            found[variant] = load_engine(str(folder), dtype="fp32", device="cpu")[:2]
        return found[variant]
    return get


ENGINE = engines()


@pytest.mark.parametrize("variant", ["llama", "gqa", "qkv_bias"])
def test_lookahead_equals_vanilla(tmp_path_factory, variant):
    engine, tok = ENGINE(variant, tmp_path_factory)
    hits = 0
    for text in TEXTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = METHODS["vanilla"](engine, {2}).generate(ids, 60).tokens
        for options in OPTIONS:
            gen = METHODS["lookahead"](engine, {2}, **options).generate(ids, 60)
            assert gen.tokens == want, (text, options)
            assert sum(gen.accept_lengths) == len(gen.tokens)
            assert gen.stats["rounds"] == gen.steps - 1        # the first token comes from prefill
            hits += gen.stats["hits"]
    assert hits > 0                     # the pool is used, not just the window


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 9])
def test_lookahead_stops_at_max_new_tokens_and_eos(tiny_engine, limit):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [TEXTS[4]], [])
    full = METHODS["vanilla"](engine, set()).generate(ids, 40).tokens
    short = METHODS["lookahead"](engine, set(), level=3, window=4).generate(ids, limit)
    assert short.tokens == full[:limit] and sum(short.accept_lengths) == limit
    eos = full[min(limit, 39)]          # pretend a later token is EOS: output stops right after it
    cut = METHODS["lookahead"](engine, {eos}, level=3, window=4).generate(ids, 40)
    assert cut.tokens == full[:full.index(eos) + 1]


@pytest.mark.parametrize("options, message", [
    ({"level": 1}, "lookahead.level: must be at least 2 (got 1)"),
    ({"window": 0}, "lookahead.window: must be at least 1 (got 0)"),
    ({"guess": -1}, "lookahead.guess: must be at least 0 (got -1)"),
    ({"level": 9, "window": 20}, "exceeds the 128 the cache reserves"),
])
def test_bad_options_are_one_line_errors(tiny_engine, options, message):
    with pytest.raises(SpecbenchError) as err:
        METHODS["lookahead"](tiny_engine[0], {2}, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_block_is_the_official_size(tiny_engine):
    # Root + (W-1) + (N-2)·W window cells + G·(N-1) guess tokens: 1 + 6 + 21 + 28.
    assert METHODS["lookahead"](tiny_engine[0], {2}).max_block() == 56
