"""`specbench run --batch-size`: batched rows, their answer lines and files, resume, the report's
per-batch-size numbers, the batched cost model and the errors."""

import json

import pytest

from specbench_cli.analysis.costmodel import crossing, predict_batches, predicted_at_batch
from specbench_cli.analysis.metrics import MetricsError, aggregate_throughput, summarize
from specbench_cli.methods import base_name, batch_size_of, batched, expand_batch_sizes, \
    unbatched

from test_bad_input import one_line_error
from test_cli import QUESTIONS, invoke
from conftest import write_questions


def test_names_carry_the_batch_size():
    assert batched("pld", 1) == "pld" and batched("pld", 4) == "pld+b4"
    name = batched("kangaroo@exit_layer=1,threshold=0.4", 16)
    assert (base_name(name), batch_size_of(name), unbatched(name)) == \
        ("kangaroo", 16, "kangaroo@exit_layer=1,threshold=0.4")
    assert expand_batch_sizes(["vanilla", "pld"], [1, 2]) == ["vanilla", "pld", "vanilla+b2",
                                                              "pld+b2"]
    # vanilla at batch 1 is what every batched answer must equal
    assert expand_batch_sizes(["vanilla", "pld"], [4]) == ["vanilla", "vanilla+b4", "pld+b4"]


def lines_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def batched_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batched")
    qfile = write_questions(folder / "q.jsonl", QUESTIONS)
    out = folder / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--methods",
                    "vanilla,pld,lookahead", "--batch-size", "1,4", "--max-new-tokens", 24,
                    "--warmup", 1, "--out", out)
    assert result.exit_code == 0, result.output
    return qfile, out, result.output


def test_batched_rows_answer_like_batch_one_vanilla(batched_run):
    _, out, output = batched_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["batch_sizes"] == [1, 4]
    assert meta["config"]["methods"] == ["vanilla", "pld", "lookahead", "vanilla+b4", "pld+b4",
                                         "lookahead+b4"]
    assert meta["methods"]["lookahead+b4"]["options"] == meta["methods"]["lookahead"]["options"]
    reference = {r["question_id"]: r["token_ids"] for r in lines_of(out / "answers/vanilla.jsonl")}
    for name in ("vanilla+b4", "pld+b4", "lookahead+b4"):
        rows = lines_of(out / f"answers/{name}.jsonl")
        assert {r["question_id"]: r["token_ids"] for r in rows} == reference, name
        # six questions dealt into batches of 4 and 2; a batch's lines share its wall time
        assert [(r["batch"]["first_question"], r["batch"]["questions"]) for r in rows] == \
            [(1, 4)] * 4 + [(5, 2)] * 2
        assert len({r["batch"]["wall_time"] for r in rows[:4]}) == 1
        for r in rows:
            assert r["batch"]["size"] == 4
            assert 0 < sum(r["choices"][0]["wall_time"]) <= r["batch"]["wall_time"]
    summary = json.loads((out / "summary.json").read_text())
    methods = summary["methods"]
    assert methods["vanilla+b4"]["speedup_overall"] == 1.0
    for name in ("pld+b4", "lookahead+b4"):
        assert methods[name]["batch_size"] == 4
        assert methods[name]["equal_to_vanilla"]["share"] == 1.0
        assert methods[name]["mean_accepted_overall"] == \
            methods[unbatched(name)]["mean_accepted_overall"]
    assert "speedup against batch size" in output and "agg tok/s" in output
    assert "batched rows (name+bB, run with --batch-size B)" in " ".join(output.split())
    assert set(summary["batches"]) == {"pld", "lookahead"}
    assert summary["batches"]["pld"]["sizes"] == [1, 4]


def test_aggregate_throughput_counts_each_batch_once():
    def row(q, tokens, wall, first, batch_wall):
        return {"question_id": q, "repeat": 0, "choices": [{"new_tokens": [tokens],
                                                            "wall_time": [wall]}],
                "batch": {"size": 2, "questions": 2, "first_question": first,
                          "wall_time": batch_wall}}
    rows = [row(1, 10, 1.0, 1, 2.0), row(2, 30, 2.0, 1, 2.0), row(3, 20, 0.5, 3, 0.5)]
    assert aggregate_throughput(rows) == pytest.approx(60 / 2.5)
    alone = [{"question_id": 1, "choices": [{"new_tokens": [10], "wall_time": [0.5]}]}]
    assert aggregate_throughput(alone) == pytest.approx(20.0)


def test_a_batched_row_needs_vanilla_at_its_batch_size(batched_run):
    _, out, _ = batched_run
    answers = {n: lines_of(out / f"answers/{n}.jsonl") for n in ("vanilla", "pld+b4")}
    with pytest.raises(MetricsError, match=r"no vanilla\+b4 answers: pld\+b4's speedup"):
        summarize(answers)


def test_a_resumed_batch_writes_only_its_missing_lines(tiny_model_dir, batched_run, tmp_path):
    qfile, _, _ = batched_run
    out = tmp_path / "run"
    args = ("run", "--model", tiny_model_dir, "--bench", qfile, "--methods", "vanilla,pld",
            "--batch-size", "2", "--max-new-tokens", 16, "--warmup", 0, "--out", out)
    assert invoke(*args).exit_code == 0
    path = out / "answers" / "pld+b2.jsonl"
    whole = lines_of(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in whole[:3]))   # lost: q4, q5, q6
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    again = lines_of(path)
    assert [r["question_id"] for r in again] == [1, 2, 3, 4, 5, 6]
    assert again[:3] == whole[:3]
    assert [r["token_ids"] for r in again] == [r["token_ids"] for r in whole]
    assert len(lines_of(out / "answers" / "vanilla+b2.jsonl")) == 6


def test_a_continuous_run_refills_its_batches(tiny_model_dir, batched_run, tmp_path):
    """--continuous: each pass is one batch of every question, B at a time; answers equal
    batch-1 vanilla; a resumed pass decodes only the questions still missing."""
    qfile, _, _ = batched_run
    out = tmp_path / "run"
    args = ("run", "--model", tiny_model_dir, "--bench", qfile, "--methods", "vanilla,pld",
            "--batch-size", "4", "--continuous", "--max-new-tokens", 24, "--warmup", 0,
            "--out", out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "continuous batching (--continuous)" in " ".join(result.output.split())
    reference = [r["token_ids"] for r in lines_of(out / "answers/vanilla.jsonl")]
    for name in ("vanilla+b4", "pld+b4"):
        rows = lines_of(out / f"answers/{name}.jsonl")
        assert [r["token_ids"] for r in rows] == reference, name
        assert {(r["batch"]["size"], r["batch"]["questions"], r["batch"]["first_question"],
                 r["batch"]["continuous"], r["batch"]["wall_time"]) for r in rows} == \
            {(4, 6, 1, True, rows[0]["batch"]["wall_time"])}
    path = out / "answers" / "pld+b4.jsonl"
    whole = lines_of(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in whole[:4]))   # lost: q5, q6
    assert invoke(*args, "--resume").exit_code == 0
    again = lines_of(path)
    assert [r["token_ids"] for r in again] == [r["token_ids"] for r in whole]
    assert [(r["batch"]["questions"], r["batch"]["first_question"]) for r in again[4:]] == \
        [(2, 5), (2, 5)]


@pytest.mark.parametrize("args, pattern", [
    (("--batch-size", "0"), "--batch-size '0': expected integers of at least 1"),
    (("--batch-size", "2,x"), "--batch-size '2,x': expected comma-separated integers"),
    (("--batch-size", "2", "--workers", "2"), "--batch-size above 1 runs in this process only"),
    (("--continuous",), "--continuous refills batches: give --batch-size above 1 too"),
])
def test_bad_batch_sizes_are_one_line_errors(tiny_model_dir, tmp_path, args, pattern):
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out",
                          tmp_path / "run", *args), pattern)


# A profile whose forward costs one step up to 4 tokens, then grows linearly.
PROFILE = {"latency_seconds": {"64": {"1": 1.0, "2": 1.0, "4": 1.0, "8": 2.0, "16": 4.0}}}
ZERO = {"prefill": 0.0, "draft": 0.0, "rest": 0.0}


def test_batched_prediction_is_mat_times_c_of_b_over_c_of_b_times_block():
    def at(size, **t):
        return predicted_at_batch(size, 2.0, {4: 3}, PROFILE, 1.0, {**ZERO, **t}, ZERO, None)
    assert at(1) == pytest.approx(2.0)           # MAT · c(1) / c(4)
    assert at(2) == pytest.approx(1.0)           # 2 · c(2) / c(8)
    assert at(4) == pytest.approx(0.5)           # 2 · c(4) / c(16)
    assert at(8) == pytest.approx(2 * 2.0 / 8.0)     # past the table: linear, c(32) = 8
    # drafting per sequence: 2 · c(1) / (c(4) + 1 · 0.5)
    assert at(1, draft=0.5) == pytest.approx(2 / 1.5)
    # blocks of 1 and 16 alike: c averaged over them (2.5), not c of the mean block 8.5 (2.125)
    assert predicted_at_batch(1, 2.0, {1: 5, 16: 5}, PROFILE, 1.0, ZERO, ZERO, None) == \
        pytest.approx(2 / 2.5)


def test_break_even_is_where_the_gain_last_ends():
    assert crossing([(1, 2.0), (2, 1.0), (4, 0.5)]) == pytest.approx(2.0)
    assert crossing([(1, 1.5), (4, 0.5)]) == pytest.approx(2.0)     # halfway in log2 B
    assert crossing([(1, 0.8), (2, 1.2), (4, 0.9)]) == pytest.approx(2 ** (1 + 2 / 3))
    assert crossing([(1, 1.2), (8, 1.1)]) is None                    # still gains at 8
    assert crossing([(1, 0.8), (8, 0.9)]) == 0.0                     # never gains


def test_predict_batches_pairs_measured_and_predicted_per_method():
    def row(size, speedup, aggregate):
        return {"batch_size": size, "speedup_overall": speedup, "mean_accepted_overall": 2.0,
                "mean_verified": 4.0, "block_sizes": {"4": 10}, "breakdown": None,
                "aggregate_tokens_per_s": aggregate, "ms_per_token": 1.0}
    summary = {"baseline": "vanilla", "methods": {
        "vanilla": row(1, 1.0, 10.0), "pld": row(1, 1.8, 18.0),
        "vanilla+b2": row(2, 1.0, 15.0), "pld+b2": row(2, 0.9, 13.5)}}
    summary["methods"]["vanilla"].update(mean_accepted_overall=1.0, mean_verified=1.0,
                                         block_sizes={"1": 10})
    curves = predict_batches(summary, PROFILE)
    assert list(curves) == ["pld"]
    pld = curves["pld"]
    assert pld["measured"] == {"1": 1.8, "2": 0.9}
    assert pld["predicted"] == {"1": pytest.approx(2.0), "2": pytest.approx(1.0)}
    assert pld["aggregate_tokens_per_s"] == {"1": 18.0, "2": 13.5}
    assert pld["break_even_measured"] == pytest.approx(2 ** (0.8 / 0.9))
    assert pld["break_even_predicted"] == pytest.approx(2.0)
    # without a profile: measured only
    assert predict_batches(summary, None)["pld"]["predicted"] == {"1": None, "2": None}


def test_a_joined_profile_replaces_c_of_b_times_block():
    from specbench_cli.analysis.costmodel import step_cost
    joined = {**PROFILE, "batch_latency_seconds": {"2": {"1": 3.0, "4": 5.0}}}
    assert step_cost(joined, 2, 1, None) == pytest.approx(3.0)     # measured, not c(2) = 1
    assert step_cost(joined, 2, 2, None) == pytest.approx(3.0 + 2 / 3 * 1)
    assert step_cost(joined, 4, 4, None) == pytest.approx(4.0)      # no table: c(16)
    assert step_cost(joined, 1, 8, None) == pytest.approx(2.0)
    assert predicted_at_batch(2, 2.0, {4: 1}, joined, 1.0, ZERO, ZERO, None) == \
        pytest.approx(2 * 3.0 / 5.0)


def test_joined_forwards_are_profiled_per_batch_size(tiny_engine):
    from specbench_cli.run.profile import joined_latencies
    table = joined_latencies(tiny_engine[0], [2, 3], [1, 4], context=16, repeats=1)
    assert set(table) == {"2", "3"} and all(set(t) == {"1", "4"} for t in table.values())
    assert all(s > 0 for t in table.values() for s in t.values())


def test_plots_draw_speedup_and_throughput_against_batch_size(batched_run):
    _, out, _ = batched_run
    result = invoke("report", out, "--plots")
    assert result.exit_code == 0, result.output
    assert (out / "plots" / "speedup_vs_batch.png").stat().st_size > 10_000
    assert (out / "plots" / "speedup_vs_batch.svg").exists()


def test_learning_methods_start_every_pass_afresh(tiny_model_dir, tmp_path):
    """A method that learns across questions meets question 1 (two turns) with the same learned
    state in every pass (repeat × batch size): not after the passes that taught it the answer."""
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--methods",
                    "vanilla,suffix,recycling,sam", "--batch-size", "1,2", "--repeats", 2,
                    "--max-new-tokens", 32, "--warmup", 1, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("suffix", "recycling", "sam"):
        rows = lines_of(out / f"answers/{name}.jsonl") + \
            lines_of(out / f"answers/{name}+b2.jsonl")
        assert [(r["repeat"], r["method"]) for r in rows] == \
            [(0, name), (1, name), (0, f"{name}+b2"), (1, f"{name}+b2")]
        first = rows[0]["turn_accept_lengths"]
        assert any(a > 1 for turn in first for a in turn), name     # it drafted and was right
        assert [r["turn_accept_lengths"] for r in rows] == [first] * 4, name
