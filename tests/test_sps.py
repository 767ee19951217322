"""SpS: a separate drafter model gives exactly vanilla's greedy tokens on every architecture;
its pieces (vocabulary check, adaptive γ, drafter bookkeeping, trainer) do what they say."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import check_length_and_eos_edges, make_model_folder
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.methods.sps import check_vocabulary, next_draft_length
from specbench_cli.bench.prompts import build_prompt_ids

PROMPTS = ["Summarize: the cat sat on the mat. the cat sat on the mat again.",
           "Translate German to English: Guten Morgen!", "abcabcabcabc", "x"]


@pytest.fixture(scope="module")
def drafter_dir(tmp_path_factory):
    """A random one-layer drafter with the tiny models' character tokenizer."""
    return make_model_folder(tmp_path_factory.mktemp("drafter") / "d", "llama", seed=1,
                             num_hidden_layers=1)


@pytest.fixture(scope="module")
def drafter(drafter_dir):
    return load_engine(str(drafter_dir), dtype="fp32", device="cpu")[0]


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def target(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok, folder


def vanilla(engine, ids, n, eos=frozenset({2})):
    return METHODS["vanilla"](engine, set(eos)).generate(ids, n).tokens


def test_random_drafter_equals_vanilla(target, drafter, drafter_dir):
    engine, tok, _ = target
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = vanilla(engine, ids, 60)
        for num_draft, adaptive in ((1, False), (4, False), (3, True)):
            gen = METHODS["sps"](engine, {2}, tok, drafter=drafter, num_draft=num_draft,
                                 adaptive=adaptive).generate(ids, 60)
            assert gen.tokens == want, (text, num_draft, adaptive)
            assert sum(gen.accept_lengths) == len(gen.tokens)
            assert max(gen.accept_lengths) <= (2 if adaptive else 1) * num_draft + 1
            assert gen.stats["rounds"] == len(gen.accept_lengths) - 1   # the prefill commits 1
    # By folder too: the tokenizers are compared (qwen2's adds a token past the vocabulary).
    sps = METHODS["sps"](engine, {2}, tok, drafter=drafter)
    assert sps.generate(ids, 20).tokens == want[:20]


def test_length_and_eos_edges(target, drafter):
    engine, tok, _ = target
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    check_length_and_eos_edges(lambda eos: METHODS["sps"](engine, eos, tok, drafter=drafter),
                               engine, ids)


def test_drafter_equal_to_target_accepts_every_draft(target):
    """The target as its own drafter (a loaded Engine, and by folder): every round commits
    γ drafts + the bonus, but the last, cut by max_new_tokens."""
    engine, tok, folder = target
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    want = vanilla(engine, ids, 23, eos=set())
    for drafter in (engine, str(folder)):
        gen = METHODS["sps"](engine, set(), tok, drafter=drafter, num_draft=4).generate(ids, 23)
        assert gen.tokens == want
        # The prefill commits 1, then rounds of 5; the 22 left make 4 × 5 + 2.
        assert gen.accept_lengths == [1, 5, 5, 5, 5, 2]
        assert gen.stats["drafted"] == 4 * 4 + 1


def test_adaptive_draft_length_grows_on_full_acceptance(target):
    engine, tok, _ = target
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    gen = METHODS["sps"](engine, set(), tok, drafter=engine, num_draft=2,
                         adaptive=True).generate(ids, 20)
    assert gen.tokens == vanilla(engine, ids, 20, eos=set())
    assert gen.accept_lengths == [1, 3, 5, 5, 5, 1]     # γ 2 → 4 → at most 2·2


def test_next_draft_length():
    assert next_draft_length(5, 5, 5, 10) == 7          # all accepted: +2
    assert next_draft_length(9, 5, 5, 10) == 10         # capped
    assert next_draft_length(5, 2, 5, 10) == 4          # a rejection: -1
    assert next_draft_length(1, 0, 1, 10) == 1          # never below one
    assert next_draft_length(5, 0, 0, 10) == 5          # nothing drafted: unchanged


def fake(vocab_size):
    return SimpleNamespace(config=SimpleNamespace(vocab_size=vocab_size))


def tokenizer(vocab):
    return SimpleNamespace(get_vocab=lambda: dict(vocab))


def test_vocabulary_check():
    check_vocabulary(fake(96), fake(96))
    check_vocabulary(fake(96), fake(128))               # a padded drafter embedding is fine
    check_vocabulary(fake(3), fake(3), tokenizer({"a": 0, "b": 1}), tokenizer({"a": 0, "b": 1}))
    with pytest.raises(SpecbenchError) as err:
        check_vocabulary(fake(96), fake(64))
    assert str(err.value) == ("sps: the drafter's vocabulary (64 ids) is smaller than the "
                              "target's (96); a drafter needs the target's tokenizer")
    with pytest.raises(SpecbenchError) as err:
        check_vocabulary(fake(3), fake(3), tokenizer({"a": 0, "b": 1, "c": 2}),
                         tokenizer({"a": 0, "b": 2, "c": 1}))
    assert str(err.value) == ("sps: the drafter's tokenizer differs from the target's "
                              "(2 of 3 tokens map to other ids)")


def test_padded_drafter_equals_vanilla_and_bad_drafters_are_one_line_errors(tmp_path):
    folder = make_model_folder(tmp_path / "m", "llama")
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    padded = make_model_folder(tmp_path / "padded", "llama", seed=2, num_hidden_layers=1,
                               vocab_size=128)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[1]], [])
    gen = METHODS["sps"](engine, {2}, tok, drafter=str(padded)).generate(ids, 40)
    assert gen.tokens == vanilla(engine, ids, 40)
    small = make_model_folder(tmp_path / "small", "llama", seed=2, num_hidden_layers=1,
                              vocab_size=64)
    cases = [({"drafter": str(small)}, "drafter's vocabulary (64 ids) is smaller"),
             ({"drafter": str(tmp_path / "none")}, "does not exist"),
             ({}, "sps needs a draft model"),
             ({"drafter": 3}, "drafter must be a model name or path or a loaded Engine"),
             ({"drafter": engine, "num_draft": 0}, "sps.num_draft: must be at least 1 (got 0)"),
             ({"drafter": engine, "gamma": 4}, "sps: unknown option(s) gamma")]
    for options, message in cases:
        with pytest.raises(SpecbenchError) as err:
            METHODS["sps"](engine, {2}, tok, **options)
        assert message in str(err.value) and "\n" not in str(err.value), options


def test_overhead_is_the_drafters_parameters(tiny_engine, drafter):
    engine, tok = tiny_engine
    sps = METHODS["sps"](engine, {2}, tok, drafter=drafter)
    params = sum(p.numel() for p in sps.drafter.parameters())
    assert sps.parameter_overhead() == {"params": params, "bytes": 4 * params}
    assert sps.info() == {"drafter_layers": 1, "drafter_hidden_size": 64}


def test_train_sps_lowers_the_loss_and_saves_a_loadable_drafter(tiny_engine, tmp_path):
    from specbench_cli.train.data import batches, load_examples
    from specbench_cli.train.sps import drafter_config, new_drafter, sps_step, train_sps
    from specbench_cli.train.teacher import LiveTeacher
    engine, tok = tiny_engine
    corpus = tmp_path / "train.jsonl"
    answers = vanilla(engine, build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], []), 40)
    corpus.write_text("".join(json.dumps({"turns": [text], "answers": [tok.decode(answers)]})
                              + "\n" for text in PROMPTS))
    batch = next(batches(load_examples([corpus], tok, 320), 4, 0))
    torch.manual_seed(0)
    before = new_drafter(drafter_config(engine.config, 32, 1))
    with torch.no_grad():
        start = float(sps_step(engine, before, LiveTeacher(engine))(batch)[0])
    out = tmp_path / "drafter"
    train_sps(engine, tok, [corpus], out, hidden_size=32, layers=1, steps=40, lr=1e-2,
              batch_size=4, max_len=320)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in out.iterdir()}
    assert not (out / "checkpoint.pt").exists()
    sps = METHODS["sps"](engine, {2}, tok, drafter=str(out))
    with torch.no_grad():
        end = float(sps_step(engine, sps.drafter, LiveTeacher(engine))(batch)[0])
    assert end < start - 0.5
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    assert sps.generate(ids, 30).tokens == vanilla(engine, ids, 30)
    with pytest.raises(SpecbenchError, match="multiple of 32"):
        drafter_config(engine.config, 48, 1)
