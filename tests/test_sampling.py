"""Sampling at temperature > 0: the processed distribution, the rejection rules, seeds, and the
statistical check that every lossless method samples exactly what vanilla samples (marked
`sampling`, run by .ci/run), which must also catch deliberately broken samplers."""

import json
from collections import Counter

import pytest
import torch

from conftest import make_model_folder, write_questions
from specbench_cli.engine.load import load_engine
from specbench_cli.methods import METHODS, verify
from specbench_cli.methods.base import Decoding
from specbench_cli.methods.verify import Sampling
from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.run.sampling_check import chi_square, check_sampling, first_tokens
from test_methods import make, random_eagle_head, random_hydra_heads

# Low temperature: the tiny random models are near-uniform at T = 1, where 3-token sequences
# would all be rare categories and the test powerless; at 0.3 the top tokens carry 0.3-0.8.
T = 0.3
SAMPLES = 1000
ALPHA = 1e-3      # per check: ~3% chance that one of the 32 lossless checks below false-alarms


def test_probs_temperature_top_k_top_p_exact():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.allclose(Sampling(1.0).probs(logits), torch.tensor([0.5, 0.25, 0.15, 0.1]))
    sharp = Sampling(0.5).probs(logits)                       # p² renormalised
    want = torch.tensor([0.25, 0.0625, 0.0225, 0.01]) / 0.345
    assert torch.allclose(sharp, want)
    assert torch.allclose(Sampling(1.0, top_k=2).probs(logits),
                          torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # top-p 0.7: 0.5 + 0.25 reaches it; the tokens after are cut.
    assert torch.allclose(Sampling(1.0, top_p=0.7).probs(logits),
                          torch.tensor([2 / 3, 1 / 3, 0, 0]))
    assert torch.allclose(Sampling(1.0, top_p=0.5).probs(logits), torch.tensor([1.0, 0, 0, 0]))


def test_residual_is_the_normalised_positive_part():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    assert torch.allclose(verify.residual(p, q, 1), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(verify.residual(p, None, 0), torch.tensor([0.0, 0.6, 0.4]))


def test_chi_square_known_values():
    same = Counter({"a": 50, "b": 50})
    statistic, df, p = chi_square(same, same)
    assert (statistic, df) == (0.0, 1) and p == pytest.approx(1.0)
    # 2×2 table [[60, 40], [40, 60]]: statistic 8.0, df 1, p = 0.004678
    statistic, df, p = chi_square(Counter({"a": 60, "b": 40}), Counter({"a": 40, "b": 60}))
    assert statistic == pytest.approx(8.0) and df == 1 and p == pytest.approx(0.004678, rel=1e-3)
    # Categories expected fewer than 5 times are pooled: here c and d form one.
    statistic, df, _ = chi_square(Counter({"a": 50, "b": 44, "c": 3, "d": 3}),
                                  Counter({"a": 50, "b": 44, "c": 3, "d": 3}))
    assert df == 2


@pytest.fixture()
def sampled(tiny_engine):
    return tiny_engine


def sample(method, ids, n: int, settings: Sampling) -> list[int]:
    """The method's answer, sampled with these settings."""
    return method.generate(ids, n, Decoding(settings)).tokens


def test_same_seed_same_tokens_other_seed_other_tokens(sampled):
    engine, tok = sampled
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["abcabc abc"], [])
    for name in ("vanilla", "sps", "eagle", "recycling"):
        runs = []
        for seed in (0, 0, 1, 2):
            runs.append(sample(make(name, engine, set(), tok), ids, 20, Sampling(0.8, seed=seed)))
        assert runs[0] == runs[1], name
        assert runs[0] != runs[2] or runs[0] != runs[3], name


def test_sampled_answers_are_not_greedy_and_respect_top_k(sampled):
    engine, tok = sampled
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["x"], [])
    greedy = METHODS["vanilla"](engine, set()).generate(ids, 20).tokens
    top1 = Sampling(1.0, top_k=1)                       # top-1 sampling is greedy decoding
    for name in ("vanilla", "pld", "sps", "kangaroo", "medusa"):
        assert sample(make(name, engine, set(), tok), ids, 20, top1) == greedy, name


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_samples_when_asked_to(sampled, name):
    """A method that dropped the run's decoding settings would answer greedily at any seed."""
    engine, tok = sampled
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["abcabc abc"], [])
    method = make(name, engine, set(), tok)
    greedy = method.generate(ids, 20).tokens
    hot = [sample(method, ids, 20, Sampling(2.0, seed=seed)) for seed in (1, 2)]
    assert hot[0] != greedy and hot[1] != greedy and hot[0] != hot[1]


def test_run_at_temperature_reports_speedup_and_no_equality(tiny_model_dir, tmp_path):
    from test_cli import invoke
    questions = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "qa", "turns": ["Say abc abc."]}])
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions, "--methods",
                    "pld,lookahead", "--temperature", 0.7, "--top-k", 20, "--seed", 3,
                    "--max-new-tokens", 16, "--out", out)
    assert result.exit_code == 0, result.output
    assert "sampled: temperature 0.7, top_k 20, seed 3" in " ".join(result.output.split())
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["temperature"] == 0.7 and run["config"]["seed"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["pld"]["equal_to_vanilla"]["sampled"] is True
    assert summary["methods"]["pld"]["speedup_overall"] > 0
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions, "--top-p", 0.9,
                    "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "give --temperature > 0 too" in result.output


# ------------------------------------------------------------ the statistical check (slow)

@pytest.fixture(scope="module", params=[("llama", "abcabcabcabc abcabc"), ("qkv_bias", "x")],
                ids=["llama", "qwen2"])
def target(request, tmp_path_factory):
    variant, prompt = request.param
    folder = make_model_folder(tmp_path_factory.mktemp(variant) / "m", variant)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok, build_prompt_ids(tok, "vicuna_v1.1", [prompt], [])


@pytest.mark.sampling
def test_every_lossless_method_samples_vanilla_s_distribution(target):
    engine, tok, ids = target
    methods = {name: make(name, engine, set(), tok) for name in METHODS}
    # Variants that draft differently: SAMD[EAGLE2] (retrieval or the head's tree), Hydra++'s
    # prefix layer.
    methods["sam auxiliary=eagle"] = METHODS["sam"](
        engine, set(), tok, auxiliary="eagle", head=random_eagle_head(engine), min_match=2)
    methods["hydra prefix-mlp"] = METHODS["hydra"](
        engine, set(), tok, heads=random_hydra_heads(engine, prefix=True, scale=0.3),
        tree="budget32")
    results = check_sampling(methods, ids, tokens=3, samples=SAMPLES,
                             sampling=Sampling(T), alpha=ALPHA)
    assert len(results) == len(methods) - 1
    for r in results:
        assert r.categories >= 10, r          # enough categories for the test to have power
        assert r.passed, r


@pytest.mark.sampling
def test_every_method_keeps_the_distribution_at_a_small_budget(target):
    """`run --budget 3`: every method verifies at most 3 tokens a step (a chain of two, a tree
    of three) and still samples vanilla's distribution."""
    engine, tok, ids = target
    methods = {"vanilla": make("vanilla", engine, set(), tok)}
    methods.update({name: make(name, engine, set(), tok, budget=3) for name, cls in
                    METHODS.items() if cls.budget is not None})
    # ALPHA / 5 per check: its 26 checks add ~0.5% of false alarms to the ~3% above
    for r in check_sampling(methods, ids, tokens=3, samples=SAMPLES, sampling=Sampling(T),
                            alpha=ALPHA / 5):
        assert r.categories >= 10 and r.passed, r


@pytest.mark.sampling
@pytest.mark.parametrize("broken, methods", [
    ("accept every draft", ("pld", "sps", "eagle", "medusa")),
    ("skip the residual", ("recycling",)),
])
def test_broken_samplers_are_caught_at_the_same_sample_count(target, monkeypatch, broken,
                                                             methods):
    engine, tok, ids = target
    if broken == "accept every draft":
        monkeypatch.setattr(verify, "accepts", lambda rng, p_x, q_x=1.0: True)
    else:      # a rejected draft's token may be drawn again: p instead of the residual
        monkeypatch.setattr(verify, "residual", lambda p, q, x: p)
    chosen = {name: make(name, engine, set(), tok) for name in ("vanilla", *methods)}
    for r in check_sampling(chosen, ids, tokens=3, samples=SAMPLES,
                            sampling=Sampling(T), alpha=ALPHA):
        assert not r.passed, r


def batched_first_tokens(method, ids, tokens: int, samples: int, sampling: Sampling,
                         first_seed: int, batch: int) -> Counter:
    """first_tokens with the answers decoded `batch` at a time (engine/batch.py), each sequence
    seeded first_seed + i (each generation is handed its own decoding settings)."""
    from dataclasses import replace
    from functools import partial
    from specbench_cli.engine.batch import BatchEngine, run_batch
    from specbench_cli.methods.base import on_engine

    def one(seed):
        return tuple(sample(method, ids, tokens, replace(sampling, seed=seed)))
    counts = Counter()
    engine = method.engine
    with on_engine(method, BatchEngine(engine)), torch.inference_mode():
        for start in range(0, samples, batch):
            seeds = range(first_seed + start, first_seed + min(start + batch, samples))
            counts.update(run_batch(engine, [partial(one, s) for s in seeds]))
    return counts


@pytest.mark.sampling
def test_batched_sequences_keep_the_target_distribution(target):
    """At batch size 8 each sequence still samples vanilla's (unbatched) distribution."""
    engine, tok, ids = target
    vanilla = first_tokens(make("vanilla", engine, set(), tok), ids, 3, SAMPLES, Sampling(T), 0)
    for name in ("vanilla", "pld", "eagle", "recycling"):     # a chain, a head's tree, a residual
        counts = batched_first_tokens(make(name, engine, set(), tok), ids, 3, SAMPLES,
                                      Sampling(T), SAMPLES, batch=8)
        assert sum(counts.values()) == SAMPLES
        statistic, df, p = chi_square(vanilla, counts)
        assert df >= 9 and p > ALPHA, (name, statistic, df, p)


def test_first_tokens_counts_every_answer(sampled):
    engine, tok = sampled
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["x"], [])
    vanilla = METHODS["vanilla"](engine, set())
    counts = first_tokens(vanilla, ids, 2, 30, Sampling(T), 0)
    assert sum(counts.values()) == 30 and all(len(k) == 2 for k in counts)


def test_check_sampling_command_passes_lossless_and_fails_broken(tiny_model_dir, monkeypatch):
    from test_cli import invoke
    args = ("check-sampling", "--model", tiny_model_dir, "--methods", "llma", "--prompt",
            "abc abc abc", "--samples", 300, "--temperature", T)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "same distribution" in result.output and "300 answers each" in result.output
    monkeypatch.setattr(verify, "accepts", lambda rng, p_x, q_x=1.0: True)
    result = invoke(*args)
    assert result.exit_code == 1 and "differs" in result.output
    result = invoke("check-sampling", "--model", tiny_model_dir, "--temperature", 0)
    assert result.exit_code == 2 and "--temperature must be above 0" in result.output


def test_medusa_typical_acceptance_is_marked_lossy(tiny_model_dir, tmp_path, sampled):
    """Typical acceptance takes a candidate whenever it is likely enough, so it accepts more than
    rejection sampling does, and the run says it is lossy."""
    from test_cli import invoke
    from test_methods import random_heads
    engine, tok = sampled
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["abc abc abc"], [])
    heads = random_heads(engine)
    exact = METHODS["medusa"](engine, set(), tok, heads=heads, tree="budget32")
    typical = METHODS["medusa"](engine, set(), tok, heads=heads, tree="budget32", typical=True,
                                epsilon=0.0, delta=0.0)
    assert exact.lossless and not typical.lossless
    # ε = δ = 0: every candidate passes, so every step takes the deepest path.
    gen = typical.generate(ids, 40, Decoding(Sampling(T)))
    assert min(gen.accept_lengths[1:-1]) == exact.tree.depth + 1
    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()},
              str(heads_dir / "medusa_lm_head.safetensors"))
    questions = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "qa", "turns": ["Say abc abc."]}])
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions, "--methods", "medusa",
                    "--opt", f"medusa.heads={heads_dir}", "--opt", "medusa.typical=true",
                    "--temperature", 0.7, "--max-new-tokens", 16, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "lossy" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["methods"]["medusa"]["lossless"] is False
