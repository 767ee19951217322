"""SuffixDecoding and SAM-Decoding: equality with vanilla on three architectures (with the global
tree / recycling matrix carried over, options at their edges, EOS and length cuts), the suffix
trie's counts and best-first trees on known inputs, the suffix automaton against a brute-force
search, the global tree's eviction, bad options."""

import random

import pytest
import torch

from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.drafters.eagle import EagleHead
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.methods.sam import Tracker
from specbench_cli.methods.suffix import SuffixTrie, best_draft, speculate

from conftest import check_length_and_eos_edges, make_model_folder
from test_methods import PROMPTS

CONFIGS = {
    "suffix": [{}, {"max_spec": 3, "spec_factor": 2.0}, {"min_prob": 0.0, "tree_depth": 6},
               {"max_cached": 0}],
    "sam": [{}, {"auxiliary": "none", "min_match": 1}, {"num_draft": 2, "aux_draft": 3},
            {"min_match": 100}],
}


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def engine_of(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok


@pytest.mark.parametrize("name, options",
                         [(n, o) for n, configs in CONFIGS.items() for o in configs])
def test_equal_to_vanilla_with_state_carried_over(engine_of, name, options):
    engine, tok = engine_of
    method = METHODS[name](engine, {2}, tok, **options)     # one method for every prompt
    vanilla = METHODS["vanilla"](engine, {2})
    for text in PROMPTS + PROMPTS[:2]:                       # the last two seen before
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = method.generate(ids, 60)
        assert gen.tokens == vanilla.generate(ids, 60).tokens, (text, options)
        assert sum(gen.accept_lengths) == len(gen.tokens)
        assert gen.stats["rounds"] == len(gen.accept_lengths) - 1


def random_eagle_head(engine):
    torch.manual_seed(0)
    return EagleHead(engine.config)


@pytest.mark.parametrize("options", [{}, {"min_match": 1, "num_draft": 3, "aux_draft": 4,
                                          "aux_depth": 2, "aux_top_k": 2}])
def test_samd_eagle_equals_vanilla_and_drafts_both_ways(engine_of, options):
    """SAMD[EAGLE2]: retrieval where the match is long, the head's tree otherwise; the head
    catches up after either, so every answer stays vanilla's."""
    engine, tok = engine_of
    method = METHODS["sam"](engine, {2}, tok, auxiliary="eagle",
                            head=random_eagle_head(engine), **options)
    vanilla = METHODS["vanilla"](engine, {2})
    retrieved = rounds = 0
    for text in PROMPTS + ["abcabcabcabcabcabcabcabc"]:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = method.generate(ids, 60)
        assert gen.tokens == vanilla.generate(ids, 60).tokens, (text, options)
        assert sum(gen.accept_lengths) == len(gen.tokens)
        assert gen.stats["rounds"] == len(gen.accept_lengths) - 1
        retrieved += gen.stats["retrieved"]
        rounds += gen.stats["rounds"]
    assert 0 < retrieved < rounds              # both drafters were used
    assert method.parameter_overhead()["params"] == method.eagle.head.num_parameters()


def test_samd_eagle_length_and_eos_edges(tiny_engine):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    method = METHODS["sam"](engine, set(), tok, auxiliary="eagle",
                            head=random_eagle_head(engine), min_match=1)

    def make(eos):
        method.eos_ids = eos
        return method
    check_length_and_eos_edges(make, engine, ids)


@pytest.mark.parametrize("name", ["suffix", "sam"])
def test_drafts_are_accepted_on_repeated_text(tiny_engine, name):
    """A prompt the model continues by repeating it: both methods must commit several tokens
    a step, or they are not drafting at all."""
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["abcabcabcabcabcabcabcabc"], [])
    method = METHODS[name](engine, set(), tok)
    method.generate(ids, 40)
    gen = method.generate(ids, 40)             # the second time the global state knows it
    assert gen.tokens == METHODS["vanilla"](engine, set()).generate(ids, 40).tokens
    assert len(gen.tokens) / len(gen.accept_lengths) > 1.5


@pytest.mark.parametrize("name", ["suffix", "sam"])
def test_length_and_eos_edges(tiny_engine, name):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    warm = METHODS[name](engine, set(), tok)
    warm.generate(ids, 30)                     # drafts accepted whole: cuts fall inside them

    def make(eos):
        warm.eos_ids = eos
        return warm
    check_length_and_eos_edges(make, engine, ids)


def test_trie_counts_every_substring_up_to_its_depth():
    trie = SuffixTrie(3)
    trie.add([1, 2, 1, 2, 3])
    root = trie.root
    assert {t: n.count for t, n in root.children.items()} == {1: 2, 2: 2, 3: 1}
    assert root.children[1].children[2].count == 2
    assert {t: n.count for t, n in root.children[2].children.items()} == {1: 1, 3: 1}
    assert not root.children[1].children[2].children[1].children      # depth 3 is the last
    grown = SuffixTrie(3)
    grown.start([1, 2, 1, 2, 3])                                       # a token at a time
    assert shape(grown.root) == shape(root)
    trie.add([1, 2, 1, 2, 3], sign=-1)
    assert not trie.root.children


def shape(node):
    return {t: (c.count, shape(c)) for t, c in node.children.items()}


def test_speculate_grows_the_likeliest_continuations_first():
    trie = SuffixTrie(4)
    for seq in ([5, 1, 2], [5, 1, 2], [5, 1, 3], [5, 4, 6]):
        trie.add(seq)
    node = trie.root.children[5]               # after 5: 1 (3 of 4), 4 (1 of 4)
    parents, tokens, score = speculate(node, 3, 0.0)
    assert tokens[1:] == [1, 2, 4] and parents == [-1, 0, 1, 0]
    assert score == pytest.approx(0.75 + 0.5 + 0.25)
    parents, tokens, _ = speculate(node, 10, 0.3)          # 4 (0.25) and 1→3 (0.25) cut
    assert tokens[1:] == [1, 2] and parents == [-1, 0, 1]


def test_budget_follows_the_match_length():
    trie = SuffixTrie(8)
    trie.add([7, 8, 9, 1, 2, 3, 4, 5])
    draft, p, source = best_draft([trie], [0, 8, 9], max_spec=32, factor=1.0, offset=0.0,
                                  min_prob=0.1)
    assert p == 2 and source == 0 and draft[1][1:] == [1, 2]     # 2 matched: 2 drafted
    draft, p, _ = best_draft([trie], [7, 8, 9], max_spec=3, factor=1.0, offset=0.0,
                             min_prob=0.1)
    assert p == 3 and draft[1][1:] == [1, 2, 3]                  # capped by max_spec
    assert best_draft([trie], [6, 6], 32, 1.0, 0.0, 0.1) == (None, 0, -1)


def test_global_tree_keeps_the_newest_outputs(tiny_engine):
    engine, tok = tiny_engine
    method = METHODS["suffix"](engine, set(), tok, max_cached=1)
    a = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    b = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[1]], [])
    method.generate(a, 20)
    out = method.generate(b, 20).tokens
    alone = SuffixTrie(method.options["tree_depth"])
    alone.add(out)
    assert shape(method.global_trie.root) == shape(alone.root)


def brute_match(text: list[int]) -> int:
    """The longest suffix of `text` that also ends earlier in it."""
    for n in range(len(text) - 1, 0, -1):
        suffix = text[-n:]
        if any(text[i:i + n] == suffix for i in range(len(text) - n)):
            return n
    return 0


def test_automaton_tracks_the_longest_earlier_match_and_its_first_occurrence():
    rng = random.Random(0)
    for _ in range(30):
        text = [rng.randrange(3) for _ in range(rng.randrange(1, 40))]
        tracker = Tracker()
        for i, t in enumerate(text):
            tracker.add([t])
            n = brute_match(text[:i + 1])
            assert tracker.length == n, text[:i + 1]
            draft, length = tracker.draft(1)
            if n:
                first = next(j for j in range(i + 1) if text[j:j + n] == text[i + 1 - n:i + 1])
                assert length == n and draft == text[first + n:first + n + 1]


def test_automaton_takes_a_shorter_match_with_room_to_copy():
    tracker = Tracker()
    tracker.add([2, 0, 0, 0, 0, 1, 2, 3, 1, 2])
    # "1 2" first ended three tokens before the end: three can be copied after it.
    assert tracker.draft(3) == ([3, 1, 2], 2)
    # Five cannot; "2" first ended at the start, with room for five.
    assert tracker.draft(5) == ([0, 0, 0, 0, 1], 1)


@pytest.mark.parametrize("name, options, message", [
    ("sam", {"auxiliary": "medusa"}, "auxiliary must be recycling, eagle or none"),
    ("sam", {"auxiliary": "eagle"}, "sam needs an EAGLE head with auxiliary=eagle: "
                                    "--opt sam.head=PATH"),
    ("sam", {"datastore": "/nonexistent"}, "no manifest"),
    ("suffix", {"depth": 3}, "unknown option"),
])
def test_bad_options_are_one_line_errors(tiny_engine, name, options, message):
    engine, tok = tiny_engine
    with pytest.raises(SpecbenchError, match=message):
        METHODS[name](engine, {2}, tok, **options)
