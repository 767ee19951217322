"""Verification budgets (`run --budget`): each method's declaration, every budget lossless, the
rows a run makes, the fit's choice on a synthetic profile and acceptance curve, its cache."""

import json

import pytest

from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.bench.questions import Question, held_out
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS, expand_budgets, parse_budgets
from specbench_cli.run import budget as fit

from conftest import write_questions
from test_cli import QUESTIONS, invoke
from test_methods import PROMPTS, make

BUDGETED = [name for name, cls in METHODS.items() if cls.budget is not None]


def test_every_method_that_drafts_declares_its_budget():
    assert BUDGETED == [n for n in METHODS if n != "vanilla"]
    for name in BUDGETED:
        declared = METHODS[name]
        for n in (2, 3, 5, 8, 13, 64):
            options = {**declared.defaults, **declared.budget.to_options(n, declared.defaults)}
            assert 2 <= declared.budget.of(options) <= n, (name, n, options)
        # the budgets that fit the options exactly come back as given
        if name not in ("lookahead",):
            options = {**declared.defaults, **declared.budget.to_options(9, declared.defaults)}
            assert declared.budget.of(options) == 9, name


@pytest.mark.parametrize("name", BUDGETED)
def test_every_budget_keeps_the_method_equal_to_vanilla_within_its_width(tiny_engine, name):
    engine, tok = tiny_engine
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    greedy = make("vanilla", engine, {2}, tok).generate(ids, 40).tokens
    widths = set()
    for budget in (2, 3, 5, 9):
        gen = make(name, engine, {2}, tok, budget=budget).generate(ids, 40)
        assert gen.tokens == greedy, (name, budget)
        assert max(gen.stats["block_sizes"]) <= budget, (name, budget)
        widths.add(max(gen.stats["block_sizes"]))
    assert len(widths) > 1, name          # the budget changed what the method verifies


def test_budgets_parse_and_bad_ones_are_one_line_errors():
    assert parse_budgets("default,auto,4,8,4") == ["default", "auto", 4, 8]
    assert parse_budgets([16, "auto"]) == [16, "auto"] and parse_budgets(8) == [8]
    for bad, words in [("0", "2 to 128"), ("-3", "2 to 128"), ("1", "2 to 128"),
                       ("129", "2 to 128"), ("fast", "give default, auto"), ("", "give default")]:
        with pytest.raises(SpecbenchError, match=words):
            parse_budgets(bad)


def test_budget_rows_are_named_like_sweep_points_and_carry_the_options_they_set():
    names, options = expand_budgets(["vanilla", "pld", "kangaroo@threshold=0.4"],
                                    {"kangaroo@threshold=0.4": {"threshold": 0.4}},
                                    ["default", "auto", 8])
    assert names == ["vanilla", "pld", "pld@budget=auto", "pld@budget=8",
                     "kangaroo@threshold=0.4", "kangaroo@threshold=0.4,budget=auto",
                     "kangaroo@threshold=0.4,budget=8"]
    assert options["pld@budget=8"] == {"num_draft": 7} and "pld@budget=auto" not in options
    assert options["kangaroo@threshold=0.4,budget=8"] == {"threshold": 0.4, "max_draft": 7}
    assert options["kangaroo@threshold=0.4,budget=auto"] == {"threshold": 0.4}


def test_held_out_questions_are_not_the_timed_ones():
    qs = [Question(i, cat, (f"q{i}", "again")) for i, cat in
          [(1, "qa"), (2, "qa"), (3, "qa"), (4, "rag"), (5, "rag")]]
    fit_on = held_out(qs, [qs[0], qs[3], qs[4]], ["qa", "rag"])
    # qa lends those it does not time; rag has none left and lends its first timed one;
    # round-robin, so that any first few cover every subtask
    assert [q.question_id for q in fit_on] == [2, 4, 3]
    assert [q.question_id for q in held_out(qs, [qs[0]], ["qa"], per_subtask=1)] == [2]


# ------------------------------------------------------------------- the fit's choice

def profile_of(costs: dict[int, float]) -> dict:
    """A profile whose n-token forward costs costs[n] one-token forwards (10 ms each)."""
    return {"latency_seconds": {"100": {str(n): 0.01 * c for n, c in costs.items()}}}


def point(mat: float, block: int, draft_ms: float = 0.0, verify_ms: float = 10.0) -> dict:
    """Fit answers that accepted `mat` tokens a step over blocks of `block` tokens."""
    return {"mean_accepted_overall": mat, "block_sizes": {str(block): 100},
            "mean_verified": block, "share": 1.0,
            "breakdown": {"ms_per_step": {"draft": draft_ms, "verify": verify_ms, "rest": 0.0},
                          "ms_per_token": {"prefill": 0.0}}}


VANILLA = point(1.0, 1)
# memory-bound to 4 tokens, then linear in the arithmetic (the roofline's shape)
PROFILE = profile_of({1: 1.0, 2: 1.0, 4: 1.0, 8: 2.0, 16: 4.0, 32: 8.0, 64: 16.0})


def test_the_fit_picks_the_argmax_of_the_predicted_speedup():
    # MAT saturating with the budget: b = 4 gives 2.5 / 1.0, b = 8 gives 3.2 / 2.0
    mats = {2: 1.8, 4: 2.5, 8: 3.2, 16: 3.6, 32: 3.7, 64: 3.7}
    points = {b: point(m, b) for b, m in mats.items()}
    predicted = {b: fit.predicted_speedup(p, VANILLA, PROFILE, 100, 1) for b, p in points.items()}
    assert predicted[4] == pytest.approx(2.5) and predicted[8] == pytest.approx(1.6)
    assert fit.best_budget(points, lambda p: fit.predicted_speedup(p, VANILLA, PROFILE, 100,
                                                                   1)) == 4
    # drafting that grows with the budget moves the choice down: at b = 4 a draft costs 2
    # steps (MAT 2.5 / 3.0), at b = 2 nothing (1.8 / 1.0)
    points[4] = point(2.5, 4, draft_ms=20.0)
    assert fit.best_budget(points, lambda p: fit.predicted_speedup(p, VANILLA, PROFILE, 100,
                                                                   1)) == 2


def test_the_search_stops_past_the_peak_and_refines_around_it():
    mats = {b: min(b, 3.0) for b in range(2, 129)}      # accepts everything up to 3 tokens
    measured = []

    def measure(b):
        measured.append(b)
        return point(mats[b], b)
    points = fit.search(measure, lambda p, size: fit.predicted_speedup(
        p, VANILLA, PROFILE, 100, size), own=11, batch_sizes=[1])
    # 2: 2.0, 4: 3.0, 8: 1.5 (< 0.8 × 3.0: stop, 11 and beyond never run); then 3 and 6
    assert measured == [2, 4, 8, 3, 6]
    # 3 and 4 both predict 3.0: the smaller verifies less for the same; within 1% is the same
    points[2] = point(2.98, 2)
    assert fit.best_budget(points, lambda p: fit.predicted_speedup(p, VANILLA, PROFILE, 100,
                                                                   1)) == 2
    points[2] = point(2.9, 2)
    assert fit.best_budget(points, lambda p: fit.predicted_speedup(p, VANILLA, PROFILE, 100,
                                                                   1)) == 3


# ------------------------------------------------------------------- through the command line

def test_budget_run_makes_rows_fits_auto_once_and_reads_it_from_the_cache(tiny_model_dir,
                                                                          tmp_path, monkeypatch):
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS + [
        {"question_id": 7, "category": "qa", "turns": ["Who wrote Faust?"]}])
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions, "--methods", "pld",
                    "--tasks", "qa", "--limit", 1, "--budget", "default,auto,3",
                    "--max-new-tokens", 24, "--warmup", 0, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["budget"] == ["default", "auto", 3]
    assert meta["config"]["methods"] == ["vanilla", "pld", "pld@budget=auto", "pld@budget=3"]
    assert meta["methods"]["pld@budget=3"]["options"]["num_draft"] == 2
    assert meta["methods"]["pld"]["budget"] == 11
    fitted = meta["budgets"]["pld@budget=auto"]
    assert fitted["questions"] == [7] and not fitted["cached"]       # held out: 4 is timed
    assert fitted["options"] == {"num_draft": fitted["budget"] - 1}
    assert meta["methods"]["pld@budget=auto"]["budget"] == fitted["budget"]
    assert fitted["predicted"] == max(c["predicted"] for c in fitted["candidates"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert all(m["equal_to_vanilla"]["share"] == 1.0 for m in summary["methods"].values())
    assert summary["budgets"]["pld"]["auto"]["budget"] == fitted["budget"]
    assert "speedup against budget" in result.output

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr(fit.Fitter, "measure", no_measuring)
    monkeypatch.setattr(fit.Fitter, "measure_profile", no_measuring)
    again = tmp_path / "again"
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions, "--methods", "pld",
                    "--tasks", "qa", "--limit", 1, "--budget", "auto", "--max-new-tokens", 24,
                    "--warmup", 0, "--out", again)
    assert result.exit_code == 0, result.output
    second = json.loads((again / "run.json").read_text())["budgets"]["pld@budget=auto"]
    assert second["cached"] and second["budget"] == fitted["budget"]


def test_a_resumed_run_keeps_the_budget_its_run_json_recorded(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "run"
    args = ("run", "--model", tiny_model_dir, "--bench", questions, "--methods", "llma",
            "--tasks", "qa,rag", "--limit", 1, "--budget", "auto", "--max-new-tokens", 16,
            "--warmup", 0, "--out", out)
    assert invoke(*args).exit_code == 0
    fitted = json.loads((out / "run.json").read_text())["budgets"]["llma@budget=auto"]
    answers = out / "answers" / "llma@budget=auto.jsonl"
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text(lines[0])                   # as if killed after its first question

    def no_fitting(*args, **kwargs):
        raise AssertionError("fitted again")
    monkeypatch.setattr(fit, "fit_budgets", no_fitting)
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    resumed = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["token_ids"] for r in resumed] == [json.loads(line)["token_ids"] for line in lines]
    assert json.loads((out / "run.json").read_text())["budgets"]["llma@budget=auto"] == fitted


def test_cache_entries_are_checked_before_they_are_trusted():
    good = {"key": {"version": fit.VERSION},
            "value": {**point(1.5, 4), "mean_accepted_overall": 1.5}}
    assert fit.valid(good, "point")
    assert not fit.valid({**good, "key": {"version": fit.VERSION + 1}}, "point")
    assert not fit.valid({"key": good["key"], "value": {"block_sizes": {}}}, "point")
    assert not fit.valid({"key": good["key"], "value": {**good["value"], "breakdown": {}}},
                         "point")
    assert not fit.valid("garbage", "point") and not fit.valid({"value": 3}, "profile")
    assert fit.valid({"key": good["key"], "value": {"count": 6}}, "questions")
    assert not fit.valid({"key": good["key"], "value": {"count": "6"}}, "questions")


@pytest.mark.parametrize("value", ["0", "-2", "fast"])
def test_a_bad_budget_ends_in_one_line(tiny_model_dir, tmp_path, value):
    result = invoke("run", "--model", tiny_model_dir, "--budget", value, "--out", tmp_path / "r")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--budget" in lines[0], result.output
    assert not (tmp_path / "r").exists()
