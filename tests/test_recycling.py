"""Token Recycling: equality with vanilla on three architectures (hot and cold matrix, trees cut
short, EOS and length inside accepted paths), the template, drafting, the update, bad options."""

import numpy as np
import pytest
import torch

from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.methods.matrix_tree import (PAPER_TREE, RecyclingTree, recycle,
                                               template_choices)
from specbench_cli.bench.prompts import build_prompt_ids

from conftest import make_model_folder
from test_methods import PROMPTS

CONFIGS = [{}, {"num_draft": 4}, {"top_k": 1, "num_draft": 3}, {"hot_start": False, "top_k": 3}]


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def engine_of(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok


def vanilla(engine, ids, n, eos=frozenset({2})):
    return METHODS["vanilla"](engine, set(eos)).generate(ids, n).tokens


@pytest.mark.parametrize("options", CONFIGS)
def test_recycling_equals_vanilla(engine_of, options):
    engine, tok = engine_of
    method = METHODS["recycling"](engine, {2}, tok, **options)   # one matrix for every prompt
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = method.generate(ids, 60)
        assert gen.tokens == vanilla(engine, ids, 60), text
        assert sum(gen.accept_lengths) == len(gen.tokens)
        assert gen.stats["rounds"] == len(gen.accept_lengths) - 1    # the prefill commits one
        assert max(gen.accept_lengths) <= method.tree.tree.depth + 1


def warmed(engine, tok, eos, ids, **options):
    """A method whose matrix already saw this prompt's continuation, so whole paths get
    accepted and an EOS or the length limit falls inside one."""
    warm = METHODS["recycling"](engine, set(), tok, **options)
    warm.generate(ids, 40)
    method = METHODS["recycling"](engine, eos, tok, **options)
    method.matrix, method.known = warm.matrix, warm.known
    return method


@pytest.mark.parametrize("text", PROMPTS[:3])
def test_eos_and_length_cut_inside_accepted_paths(engine_of, text):
    engine, tok = engine_of
    ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
    full = vanilla(engine, ids, 40, eos=())
    for n in (1, 2, 7, 40):
        gen = warmed(engine, tok, set(), ids).generate(ids, n)
        assert gen.tokens == full[:n] and sum(gen.accept_lengths) == n
    stop = full[4]          # pretend the 5th token is EOS: output ends at its first occurrence
    gen = warmed(engine, tok, {stop}, ids, num_draft=16).generate(ids, 40)
    assert gen.tokens == full[:full.index(stop) + 1]
    assert sum(gen.accept_lengths) == len(gen.tokens)


def test_hot_start_carries_the_matrix_and_cold_start_repeats_itself(tiny_engine):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[1]], [])
    hot = METHODS["recycling"](engine, {2}, tok)
    first, second = hot.generate(ids, 40), hot.generate(ids, 40)
    assert first.tokens == second.tokens
    assert first.stats["known_roots"] < first.stats["rounds"]      # starts from zeros
    # Every root of the second run was fed to the target in the first: its row is known.
    assert second.stats["known_roots"] == second.stats["rounds"]
    cold = METHODS["recycling"](engine, {2}, tok, hot_start=False)
    a, b = cold.generate(ids, 40), cold.generate(ids, 40)
    assert a.accept_lengths == b.accept_lengths == first.accept_lengths
    assert a.stats == b.stats


def test_template_is_the_papers_80_node_tree():
    full = template_choices(80, 8)
    assert len(full) == 80 and len(set(full)) == 80
    per_depth = [sum(len(c) == d for c in full) for d in range(1, 7)]
    assert per_depth == [8, 21, 25, 15, 8, 3]
    assert set(full) == {p + (r,) for p, n in PAPER_TREE.items() for r in range(n)}
    assert template_choices(500, 8) == full                    # capped at the template


def test_smaller_trees_take_the_cheapest_nodes_and_stay_trees():
    # cost = depth + sum of ranks; ties to the shallower, then by ranks
    assert template_choices(4, 8) == [(0,), (1,), (0, 0), (2,)]
    assert template_choices(7, 8) == [(0,), (1,), (0, 0), (2,), (0, 1), (1, 0), (0, 0, 0)]
    assert template_choices(80, 1) == [(0,) * d for d in range(1, 7)]     # top-1 only: a chain
    assert all(max(c) < 2 for c in template_choices(80, 2))
    for k in range(1, 9):
        for n in range(1, 81):
            nodes = set(template_choices(n, k))
            assert all(c[:-1] in nodes for c in nodes if len(c) > 1), (n, k)


def test_draft_expands_the_tree_through_the_matrix():
    matrix = np.array([[(2 * t + 1) % 100, (3 * t + 2) % 100] for t in range(100)], np.int32)
    tree = RecyclingTree([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert tree.tree.parents == [-1, 0, 0, 1, 1, 2, 3]
    # root 1 → rank 0: 3, rank 1: 5; 3 → 7, 11; 5 → 11; 7 → 15
    assert tree.draft(matrix, 1) == [1, 3, 5, 7, 11, 11, 15]
    assert tree.layers == [(1, 3), (3, 6), (6, 7)]


def test_recycle_overwrites_rows_and_the_last_duplicate_wins():
    matrix = np.full((10, 2), 7, np.int32)
    logits = torch.zeros(3, 10)
    logits[0, [1, 2]] = torch.tensor([5.0, 4.0])    # node 0 (token 5): top-2 = 1, 2
    logits[1, [3, 4]] = torch.tensor([4.0, 5.0])    # node 1 (token 6): top-2 = 4, 3
    logits[2, [9, 8]] = torch.tensor([5.0, 4.0])    # node 2 (token 5 again): top-2 = 9, 8
    recycle(matrix, [5, 6, 5], logits)
    assert matrix[5].tolist() == [9, 8] and matrix[6].tolist() == [4, 3]
    assert (np.delete(matrix, [5, 6], axis=0) == 7).all()


def test_info_and_overhead(tiny_engine):
    engine, tok = tiny_engine
    m = METHODS["recycling"](engine, {2}, tok, num_draft=16, top_k=4)
    assert m.info() == {"tree_tokens": 17, "tree_depth": m.tree.tree.depth, "top_k": 4}
    assert m.parameter_overhead() == {"params": 0, "bytes": 96 * 4 * 4}


@pytest.mark.parametrize("options, message", [
    ({"top_k": 0}, "recycling.top_k: must be in [1, 8] (got 0)"),
    ({"top_k": 9}, "recycling.top_k: must be in [1, 8] (got 9)"),
    ({"num_draft": 0}, "recycling.num_draft: must be at least 1 (got 0)"),
    ({"tree": "big"}, "recycling: unknown option(s) tree"),
])
def test_bad_options_are_one_line_errors(tiny_engine, options, message):
    with pytest.raises(SpecbenchError) as err:
        METHODS["recycling"](tiny_engine[0], {2}, **options)
    assert message in str(err.value) and "\n" not in str(err.value)
