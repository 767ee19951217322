"""Endpoint rows (`specbench run --endpoint NAME=URL`) against the in-process fake OpenAI server
(tests/fake_openai.py): what a run records and reports from a server's stream and counters, and
how each bad endpoint ends. The real llama-server is tested in test_llama_server.py (.ci/run)."""

from __future__ import annotations

import io
import json
import socket

import pytest
from rich.console import Console

from fake_openai import WORDS, FakeServer
from specbench_cli import api
from specbench_cli.analysis.results import load_summarized
from specbench_cli.errors import SpecbenchError
from specbench_cli.run.endpoint import WARM_UP, EndpointError, parse_endpoints, prometheus

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem about alpha.",
                                                         "Now shorten it."]},
    {"question_id": 82, "category": "writing", "turns": ["Describe beta to a child."]},
    {"question_id": 201, "category": "qa", "turns": ["Who discovered gammaword rays?"]},
    {"question_id": 202, "category": "qa", "turns": ["What is delta?"]},
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def run(bench, out, endpoints: dict, **options):
    quiet = Console(file=io.StringIO())
    plan = api.plan_run(console=quiet, endpoint=[f"{k}={v}" for k, v in endpoints.items()],
                        bench=str(bench), out=out, max_new_tokens=options.pop("max_new_tokens",
                                                                              64), **options)
    return api.execute(plan, quiet)


def answers(out, row: str) -> list[dict]:
    return [json.loads(line) for line in (out / "answers" / f"{row}.jsonl").read_text()
            .splitlines()]


def test_endpoint_rows_record_texts_tokens_and_the_engines_counters(bench, tmp_path):
    timings = {"draft_n": 8, "draft_n_accepted": 6}
    # a llama.cpp server that drafted nothing leaves draft_n out of its timings
    with FakeServer(timings={}) as plain, FakeServer(timings=timings) as spec:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url})
        # every turn was asked greedy and streamed, with the run's token limit
        body = spec.requests[3]                             # after the 3 warm-up requests
        assert body["temperature"] == 0.0 and body["stream"] is True
        assert body["max_tokens"] == 64 and body["model"] == "fake-model"
        # the second turn carries the first turn's question and answer
        second = [r for r in spec.requests if len(r["messages"]) == 3][0]
        assert second["messages"][1]["role"] == "assistant"
    # --warmup (3) untimed requests first, with a prompt none of the questions has
    assert [r["messages"][0]["content"] for r in spec.requests[:3]] == [WARM_UP] * 3
    assert not any(r["messages"][-1]["content"] == WARM_UP for r in spec.requests[3:])
    lines = answers(out, "spec")
    assert [line["question_id"] for line in lines] == [81, 82, 201, 202]
    first = lines[0]
    assert first["choices"][0]["new_tokens"] == [WORDS, WORDS]
    assert first["stats"][0]["counter_source"] == "llama.cpp timings"
    # each forward commits its own token and the drafts it accepts: 12 tokens − 6 accepted
    assert first["stats"][0]["forwards"] == WORDS - 6
    run_ = load_summarized(out)
    spec_row = run_.summary["methods"]["spec"]
    assert spec_row["mean_accepted_overall"] == pytest.approx(WORDS / (WORDS - 6))
    assert run_.summary["methods"]["vanilla"]["mean_accepted_overall"] == 1.0
    assert spec_row["equal_to_vanilla"]["share"] == 1.0
    assert run_.summary["subtasks"] == ["mt_bench", "qa"]
    accepted = {s["label"]: s["value"] for s in spec_row["statistics"]}
    assert accepted["accepted"] == pytest.approx(75.0)
    assert accepted["drafted/forward"] == pytest.approx(8 / 6)
    assert spec_row["latency"]["gaps"] == 5 * (WORDS - 1)          # 5 turns, 11 gaps each
    assert spec_row["latency"]["counter_sources"] == ["llama.cpp timings"]
    meta = json.loads((out / "run.json").read_text())
    assert meta["baseline"] == "vanilla" and meta["config"]["dtype"] == "server"
    assert meta["methods"]["spec"]["options"] == {"url": spec.url, "model": "fake-model"}


def test_a_difference_is_a_near_tie_or_a_mismatch_by_the_baselines_logprobs(bench, tmp_path):
    # 'gammaword' (question 201) is answered differently at token 3
    for gap, tie in ((0.1, True), (3.0, False)):
        with FakeServer(gap=gap) as plain, FakeServer(differ={"gammaword": 3}) as other:
            out = run(bench, tmp_path / f"run{gap}", {"vanilla": plain.url, "other": other.url})
            # the baseline was asked every turn twice, the second time with logprobs
            assert sum(bool(r.get("logprobs")) for r in plain.requests) == 5
            assert sum(bool(r.get("logprobs")) for r in other.requests) == 2   # its first question
        eq = load_summarized(out).summary["methods"]["other"]["equal_to_vanilla"]
        assert eq["share"] == 0.75 and eq["first_diff"] == 201
        assert eq["differences"][0]["position"] == 3
        assert eq["differences"][0]["gap"] == pytest.approx(gap)
        assert (eq["near_tie"], eq["mismatch"]) == ((0.25, 0.0) if tie else (0.0, 0.25))


def test_prometheus_counters_stand_in_where_a_reply_has_none(bench, tmp_path):
    per_request = {"num_drafts": 3, "num_draft_tokens": 9, "num_accepted_tokens": 4,
                   "positions": [3, 1]}
    with FakeServer() as plain, FakeServer(metrics=per_request) as spec:
        counters, source = prometheus(parse_endpoints([f"s={spec.url}"])[0], 5)
        assert source == "llama.cpp /metrics" and counters["per_position"] == [0, 0]
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url})
    turn = answers(out, "spec")[0]["stats"][0]
    assert turn["counter_source"] == "llama.cpp /metrics"
    assert (turn["drafts"], turn["draft_tokens"], turn["accepted"]) == (3, 9, 4)
    assert turn["per_position"] == [3, 1]
    row = load_summarized(out).summary["methods"]["spec"]
    assert row["mean_accepted_overall"] == pytest.approx(WORDS / (WORDS - 4))
    assert row["latency"]["accepted_per_position"] == pytest.approx([1.0, 1 / 3])


def test_concurrency_rows_divide_by_the_baseline_at_the_same_concurrency(bench, tmp_path):
    with FakeServer() as plain, FakeServer(timings={"draft_n": 4, "draft_n_accepted": 2}) as spec:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url},
                  concurrency="1,2")
    summary = load_summarized(out).summary["methods"]
    assert list(summary) == ["vanilla", "spec", "vanilla+b2", "spec+b2"]
    lines = answers(out, "spec+b2")
    assert {line["question_id"] for line in lines} == {81, 82, 201, 202}
    assert all(line["batch"]["size"] == 2 and line["batch"]["concurrency"] for line in lines)
    walls = max(line["batch"]["wall_time"] for line in lines)
    tokens = sum(sum(line["choices"][0]["new_tokens"]) for line in lines)
    assert summary["spec+b2"]["aggregate_tokens_per_s"] == pytest.approx(tokens / walls)
    assert summary["spec+b2"]["equal_to_vanilla"]["share"] == 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("given, message", [
    (["vanilla"], "expected NAME=URL"),
    (["a b=http://h:1"], "expected NAME=URL"),
    (["vanilla=ftp://h"], "expected NAME=URL"),
    (["v=http://h:1", "v=http://h:2"], "a name given twice"),
])
def test_bad_endpoint_arguments_are_one_line_errors(given, message):
    with pytest.raises(EndpointError, match=message):
        parse_endpoints(given)


def test_a_url_without_v1_gets_it():
    assert parse_endpoints(["a=http://h:8080/"])[0].url == "http://h:8080/v1"
    assert parse_endpoints(["a=http://h:8080/v1"])[0].root == "http://h:8080"


def test_plan_errors_before_anything_is_written(bench, tmp_path):
    with FakeServer() as plain:
        with pytest.raises(SpecbenchError, match="cannot connect"):
            run(bench, tmp_path / "a", {"vanilla": f"http://127.0.0.1:{free_port()}"})
        with pytest.raises(SpecbenchError, match="no endpoint named 'vanilla'"):
            run(bench, tmp_path / "b", {"plain": plain.url})
        with pytest.raises(SpecbenchError, match="does not serve --model 'other'"):
            run(bench, tmp_path / "c", {"vanilla": plain.url}, model="other")
        with pytest.raises(SpecbenchError, match="leave out --methods"):
            run(bench, tmp_path / "d", {"vanilla": plain.url}, methods="pld")
        with pytest.raises(SpecbenchError, match="--concurrency is for --endpoint runs"):
            api.plan_run(console=Console(file=io.StringIO()), concurrency="4")
    assert not any((tmp_path / d).exists() for d in "abcd")


@pytest.mark.parametrize("fail, after, message", [
    ("http500", 7, "HTTP 500 out of memory"),
    ("cut", 7, "the stream was cut before the answer ended"),
    ("slow", 7, "no reply within --request-timeout 1 s"),
    ("random", 0, "answered one greedy request twice, differently"),
])
def test_a_failing_server_ends_in_one_line_and_resume_finishes(bench, tmp_path, fail, after,
                                                               message):
    out = tmp_path / "run"
    # the spec server fails from its 8th request on (3 warm-ups, then question 81's 2 turns
    # and their determinism check: question 82), or from its first where it ignores temperature 0
    with FakeServer() as plain, FakeServer(fail=fail, fail_after=after, delay=3) as spec:
        endpoints = {"vanilla": plain.url, "spec": spec.url}
        with pytest.raises(EndpointError, match=message):
            run(bench, out, endpoints, request_timeout=1)
        kept = [line["question_id"] for line in answers(out, "vanilla")]
        assert kept == ([81] if after == 0 else [81, 82])
        assert (out / "answers" / "spec.jsonl").exists() == bool(after)
        spec.fail = None                      # mended: --resume answers only what is missing
        run(bench, out, endpoints, request_timeout=1, resume=True)
    assert [line["question_id"] for line in answers(out, "spec")] == [81, 82, 201, 202]
    assert [line["question_id"] for line in answers(out, "vanilla")] == [81, 82, 201, 202]


def test_the_report_plots_and_gate_take_endpoint_rows(bench, tmp_path):
    from specbench_cli.analysis.report import report_runs
    with FakeServer(timings={}) as plain, \
            FakeServer(timings={"draft_n": 8, "draft_n_accepted": 6}) as spec:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url})
    console = Console(file=io.StringIO(), width=200)
    report_runs([out], console, plots=True, err_console=Console(file=io.StringIO()))
    text = console.file.getvalue()
    assert "endpoints" in text and spec.url in text and "not specbench's" in text
    assert "endpoint rows (run --endpoint)" in text
    assert "TTFT ms" in text and "gap p50" in text and "llama.cpp timings" in text
    assert (out / "plots" / "speedup_by_subtask.png").is_file()
    # the regression gate: a baseline saved from the run, and the run against it
    quiet = Console(file=io.StringIO())
    api.compare(out, tmp_path / "base.yaml", save=True, console=quiet)
    assert api.compare(out, tmp_path / "base.yaml", speedup_tolerance=10, console=quiet) == []


def test_a_second_answer_parting_at_a_near_tie_is_no_sampling(bench, tmp_path):
    """A server's prompt cache may compute the repeated prompt's last token in another kernel
    shape; a flip where the top two were within the tolerance is kept, recorded."""
    with FakeServer(fail="random", gap=0.1) as plain:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url})
    turn = answers(out, "vanilla")[0]["stats"][0]
    assert turn["probe_parted_at"] == 2                                     # " r1" against " r2"
    assert turn["token_bytes"] == [3] and turn["top2_gap"] == [pytest.approx(0.1)]


def test_a_row_parting_where_the_baselines_second_answer_did_is_a_near_tie(bench, tmp_path):
    # the baseline's second answer parts from its first at token 0 with a gap of 0.1; the other
    # server writes another first word too: the baseline's margin there was a near-tie
    with FakeServer(fail="random", gap=0.1) as plain, FakeServer() as other:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "other": other.url})
    eq = load_summarized(out).summary["methods"]["other"]["equal_to_vanilla"]
    assert eq["share"] == 0.0 and eq["near_tie"] == 1.0 and eq["mismatch"] == 0.0


def test_drafting_rounds_and_positions_come_from_prometheus_beside_per_request_counters(
        bench, tmp_path):
    per_request = {"num_drafts": 2, "num_draft_tokens": 8, "num_accepted_tokens": 6,
                   "positions": [2, 1]}
    with FakeServer(timings={}) as plain, \
            FakeServer(timings={"draft_n": 8, "draft_n_accepted": 6}, metrics=per_request) as spec:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url})
    turn = answers(out, "spec")[0]["stats"][0]
    assert turn["counter_source"] == "llama.cpp timings"        # the reply's own counters win
    assert (turn["drafts"], turn["per_position"]) == (2, [2, 1])
    row = load_summarized(out).summary["methods"]["spec"]
    assert row["latency"]["accepted_per_position"] == pytest.approx([1.0, 0.5])


def test_speed_bench_questions_go_to_endpoints_with_a_column_a_category(tmp_path):
    rows = [{"question_id": f"q-{i}", "category": cat, "sub_category": "x", "source": "s",
             "src_id": str(i), "difficulty": "easy", "multiturn": False,
             "turns": [f"Question {i} about {cat}."]}
            for i, cat in enumerate(["coding", "coding", "math", "writing"])]
    rows.append({**rows[0], "question_id": "q-9", "turns": [
        "FULL BENCHMARK DATA SHOULD BE FETCHED FROM THE SOURCE USING SPECDEC_BENCH"]})
    bench = tmp_path / "qualitative.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeServer(timings={}) as plain, FakeServer(timings={"draft_n": 2,
                                                              "draft_n_accepted": 1}) as spec:
        out = run(bench, tmp_path / "run", {"vanilla": plain.url, "spec": spec.url},
                  tasks="coding,math")
    summary = load_summarized(out).summary
    assert summary["subtasks"] == ["coding", "math"]
    assert summary["methods"]["spec"]["questions"] == 3          # the placeholder left out
    assert [line["original_id"] for line in answers(out, "spec")] == ["q-0", "q-1", "q-2"]


def test_one_endpoint_given_as_a_string_is_a_list_of_one(bench, tmp_path):
    """A run config file may write `endpoint: vanilla=URL`: the run stores it as a list."""
    with FakeServer(timings={}) as plain:
        plan = api.plan_run(console=Console(file=io.StringIO()), endpoint=f"vanilla={plain.url}",
                            bench=str(bench), out=tmp_path / "run", max_new_tokens=8)
        assert plan.config.endpoint == [f"vanilla={plain.url}"]
        out = api.execute(plan, Console(file=io.StringIO()))
    assert [line["question_id"] for line in answers(out, "vanilla")] == [81, 82, 201, 202]
