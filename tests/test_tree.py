"""Tree buffers on a hand-made tree, and tree verification equal to vanilla on random trees."""

import random

import pytest
import torch

from specbench_cli.methods import METHODS
from specbench_cli.methods.verify import GREEDY, DecodeState, Tree, verify_tree
from specbench_cli.bench.prompts import build_prompt_ids

#        0
#      /   \
#     1     2          choices (0,), (1,)
#    / \    |          (0,0), (0,1), (1,0)
#   3   4   5
#   |
#   6                  (0,0,0)
CHOICES = [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def test_tree_buffers_exact():
    tree = Tree.from_choices(list(reversed(CHOICES)))      # order of the input must not matter
    assert tree.parents == [-1, 0, 0, 1, 1, 2, 3]
    assert tree.depths == [0, 1, 1, 2, 2, 2, 3]
    assert tree.paths == [[0, 1, 4], [0, 2, 5], [0, 1, 3, 6]]
    assert tree.depth == 3 and len(tree) == 7
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(tree.mask, want)


def test_bad_trees_are_refused():
    with pytest.raises(ValueError, match=r"tree choice \[0, 1\] has no parent \[0\]"):
        Tree.from_choices([(0, 1)])
    with pytest.raises(ValueError, match="node 0 as root"):
        Tree([0, 1])


def decode_with_trees(engine, ids, n, candidates, seed):
    """Greedy decoding where each step verifies a random tree whose nodes hold random tokens,
    except that `candidates(state)` may plant the right continuation on some branch."""
    rng = random.Random(seed)
    state = DecodeState(engine, ids, n, {2}, GREEDY)
    accepted = []
    while not state.done:
        depth = rng.randint(1, 4)
        choices = {tuple(rng.randrange(3) for _ in range(rng.randint(1, depth)))
                   for _ in range(rng.randint(1, 12))}
        choices = {c[:i] for c in choices for i in range(1, len(c) + 1)}    # prefix-closed
        tree = Tree.from_choices(sorted(choices))
        tokens = candidates(state, tree, rng)
        accepted.append(verify_tree(state, tree, tokens).accepted)
    return state.new_tokens, accepted


def test_random_trees_equal_vanilla(tiny_engine):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["abcabcabc tree test"], [])
    want = METHODS["vanilla"](engine, {2}).generate(ids, 60).tokens

    def random_tokens(state, tree, rng):
        return [0] + [rng.randrange(3, 96) for _ in range(len(tree) - 1)]

    def planted(state, tree, rng):
        # Put vanilla's true continuation on the last path, random tokens elsewhere.
        tokens = random_tokens(state, tree, rng)
        done = len(state.new_tokens)
        for j in tree.paths[-1][1:]:
            k = done + tree.depths[j] - 1
            if k < len(want):
                tokens[j] = want[k]
        return tokens

    for seed in range(3):
        got, _ = decode_with_trees(engine, ids, 60, random_tokens, seed)
        assert got == want
        got, accepted = decode_with_trees(engine, ids, 60, planted, seed)
        assert got == want
        assert max(accepted) >= 2       # the planted branch is found and its rows moved
