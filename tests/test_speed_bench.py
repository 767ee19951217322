"""SPEED-Bench question files (parquet and JSONL in the dataset's shape): categories as subtasks,
placeholder rows left out and counted, the config from the file name or the rows, string ids,
one-line errors, --tasks, and per-category columns in metrics and the report. Spec-Bench files
keep their six subtasks."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench_cli import api
from specbench_cli.analysis.metrics import summarize
from specbench_cli.analysis.results import SHORT
from specbench_cli.bench.questions import (KNOWN_SUBTASKS, SPEED_CONFIGS, SUBTASKS, TaskError,
                                           bench_subtasks, held_out, load_questions,
                                           resolve_bench, select)
from specbench_cli.bench.speed_bench import PLACEHOLDER
from specbench_cli.cli import app
from specbench_cli.run_options import checked_run_options

from conftest import pinned_run, write_questions

QUALITATIVE = ["coding", "humanities", "math", "multilingual", "qa", "rag", "reasoning",
               "roleplay", "stem", "summarization", "writing"]
THROUGHPUT = ["low_entropy", "mixed", "high_entropy"]
NOTE = ("note: {name}: {n} of {total} rows are placeholders (their text is to be fetched from "
        "other datasets), left out; rebuild the file with NVIDIA's specdec_bench "
        "prepare_data.py (github.com/NVIDIA/Model-Optimizer, examples/specdec_bench) to run "
        "them\n")


def row(qid, category, turns=None, **fields) -> dict:
    """A row in the dataset's shape (its question ids are strings)."""
    return {"question_id": qid, "category": category, "sub_category": f"{category}-sub",
            "turns": turns if turns is not None else [f"Question {qid}?"],
            "source": "https://example.org/source", "src_id": f"src-{qid}",
            "difficulty": "medium", "multiturn": False, **fields}


def placeholder(qid, category) -> dict:
    return row(qid, category, [f"{PLACEHOLDER}\n\nAnswer {{question}}"])


def write(path: Path, rows: list[dict]) -> Path:
    """Parquet through pandas and pyarrow, as the dataset ships; JSONL otherwise."""
    if path.suffix == ".parquet":
        pd = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        pd.DataFrame(rows).to_parquet(path)
        return path
    return write_questions(path, rows)


SAMPLE = [row("cod-1", "coding", ["Write a sort.", "Now in C."]), row("mth-1", "math"),
          placeholder("cod-2", "coding"), row("wri-1", "writing"), placeholder("hum-1", "humanities"),
          row("cod-3", "coding")]


@pytest.mark.parametrize("name", ["test.parquet", "rows.jsonl"])
def test_categories_become_subtasks_and_placeholders_are_counted(tmp_path, capsys, name):
    path = write(tmp_path / name, SAMPLE)
    qs = load_questions(path)
    # Placeholder rows (3 and 5) are left out but keep their numbers: ids are row numbers.
    assert [(q.question_id, q.subtask, q.original_id) for q in qs] == [
        (1, "coding", "cod-1"), (2, "math", "mth-1"), (4, "writing", "wri-1"),
        (6, "coding", "cod-3")]
    assert qs[0].turns == ("Write a sort.", "Now in C.") and qs[0].category == "coding"
    assert capsys.readouterr().err == NOTE.format(name=name, n=2, total=6)
    # No name to go by: the first row's category says qualitative, whose 11 categories
    # `--tasks all` means.
    assert bench_subtasks(str(path)) == QUALITATIVE


def test_a_file_of_placeholders_only_is_a_one_line_error(tmp_path):
    path = write(tmp_path / "test.parquet", [placeholder("a", "qa"), placeholder("b", "rag")])
    with pytest.raises(TaskError) as err:
        load_questions(path)
    assert str(err.value) == (f"{path}: all 2 rows are placeholders (their text is to be fetched "
                              "from other datasets); rebuild the file with NVIDIA's specdec_bench "
                              "prepare_data.py (github.com/NVIDIA/Model-Optimizer, "
                              "examples/specdec_bench)")


def test_the_config_is_read_from_the_file_name(tmp_path):
    # Only the three fields Spec-Bench's files have too: the name says SPEED-Bench.
    bare = [{"question_id": "t1", "category": "low_entropy", "turns": ["aaaa"]},
            {"question_id": "t2", "category": "high_entropy", "turns": ["xyz"]}]
    path = write(tmp_path / "speed_bench-throughput_8k.jsonl", bare)
    assert [(q.question_id, q.subtask) for q in load_questions(path)] == [
        (1, "low_entropy"), (2, "high_entropy")]
    assert bench_subtasks(str(path)) == THROUGHPUT
    # A qualitative row in a file named throughput_2k is a bad row.
    path = write(tmp_path / "throughput_2k.jsonl", [bare[0], row("c", "coding")])
    with pytest.raises(TaskError, match=r"throughput_2k.jsonl:2: category 'coding' is not one of "
                                        r"throughput_2k's: low_entropy, mixed, high_entropy$"):
        load_questions(path)
    # No config in the name: the rows' categories tell; the throughput configs share theirs.
    path = write(tmp_path / "test.jsonl", [row("m", "mixed"), row("c", "coding")])
    assert bench_subtasks(str(path)) == THROUGHPUT
    with pytest.raises(TaskError, match=r"test.jsonl:2: category 'coding' is not one of "
                                        r"throughput_\*'s"):
        load_questions(path)


def test_string_and_integer_ids(tmp_path):
    path = write(tmp_path / "test.jsonl", [row("7f3a", "qa"), row(12, "rag")])
    assert [(q.question_id, q.original_id) for q in load_questions(path)] == [(1, "7f3a"),
                                                                            (2, "12")]
    path = write(tmp_path / "dup.jsonl", [row("a", "qa"), row("b", "qa"), row("a", "rag")])
    with pytest.raises(TaskError, match=r"dup.jsonl:3: duplicate question_id 'a'$"):
        load_questions(path)


@pytest.mark.parametrize("bad, message", [
    ({"question_id": "b", "category": "qa"}, "rows.jsonl:2: missing field 'turns'"),
    (row("b", "qa", "just text"), "rows.jsonl:2: field 'turns' must be a list, got a string"),
    (row("b", "qa", []), "rows.jsonl:2: question 'b' has no turns (need a list of strings)"),
    (row("b", "qa", [1]), "rows.jsonl:2: question 'b' has no turns (need a list of strings)"),
    (row(1.5, "qa"), "rows.jsonl:2: field 'question_id' must be a string or an integer, got a "
                     "number"),
    (row(True, "qa"), "rows.jsonl:2: field 'question_id' must be a string or an integer, got "
                      "true/false"),
    (row("b", "poetry"), "rows.jsonl:2: category 'poetry' is not one of qualitative's: coding, "
                         "humanities"),
    (row("b", "qa", sub_category=3), "rows.jsonl:2: field 'sub_category' must be a string or "
                                     "null, got an integer"),
    (["b", "qa"], "rows.jsonl:2: expected an object with question_id, category, turns"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_row(tmp_path, bad, message):
    path = write(tmp_path / "rows.jsonl", [row("a", "qa"), bad])
    with pytest.raises(TaskError) as err:
        load_questions(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_parquet_files(tmp_path, monkeypatch):
    path = write(tmp_path / "test.parquet", [row("a", "qa"), row("b", "qa", [])])
    with pytest.raises(TaskError, match=r"test.parquet: row 2: question 'b' has no turns"):
        load_questions(path)
    path = write(tmp_path / "first.parquet", [row("a", "sonnets")])
    with pytest.raises(TaskError, match=r"first.parquet: row 1: unknown category 'sonnets'; "
                                        r"SPEED-Bench's: coding, humanities"):
        load_questions(path)
    garbled = tmp_path / "garbled.parquet"
    garbled.write_bytes(b"PAR1 not really")
    with pytest.raises(TaskError, match=r"garbled.parquet: not a readable parquet file \("):
        load_questions(garbled)
    # Without pyarrow: one line naming the pip command (JSONL needs nothing).
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(TaskError) as err:
        load_questions(path)
    assert str(err.value) == (f"{path}: reading parquet needs pyarrow: pip install "
                              "'pyarrow>=14' (the 'speed' extra of specbench-suite), or give "
                              "the rows as JSONL")


def test_tasks_select_speed_bench_categories(tmp_path):
    path = write(tmp_path / "qualitative.jsonl",
                 [row(f"q{i}", cat) for i, cat in enumerate(
                     ["coding", "math", "coding", "writing", "math", "coding", "qa"])])
    qs = load_questions(path)

    def plan_subtasks(bench, tasks):       # what `specbench run --bench B --tasks T` checks
        return api.checked_plan(checked_run_options({"bench": bench, "tasks": tasks})).subtasks
    assert plan_subtasks(str(path), "all") == QUALITATIVE
    assert plan_subtasks("speed_bench:throughput_1k", "all") == THROUGHPUT   # no file needed yet
    chosen = plan_subtasks(str(path), "coding,math")
    assert chosen == ["coding", "math"]
    assert [q.question_id for q in select(qs, chosen, None)] == [1, 2, 3, 5, 6]
    assert [q.question_id for q in select(qs, chosen, 1)] == [1, 2]
    # Tuning questions (--budget auto) come round-robin over the chosen categories.
    assert [q.question_id for q in held_out(qs, select(qs, chosen, 1), chosen)] == [3, 5, 6]
    with pytest.raises(TaskError, match=r"unknown subtask 'mt_bench'; valid: coding, humanities,"):
        plan_subtasks(str(path), "mt_bench")
    with pytest.raises(TaskError, match=r"no questions of subtasks stem in this file \(its "
                                        r"subtasks: coding, math, writing, qa\)"):
        select(qs, ["stem"], None)


def test_speed_bench_config_names_look_in_specbench_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    with pytest.raises(TaskError) as err:
        resolve_bench("speed_bench:qualitative")
    assert str(err.value) == (
        f"--bench speed_bench:qualitative: no {tmp_path}/speed_bench/qualitative.parquet (or "
        ".jsonl); SPEED-Bench is not downloaded automatically: save that config of "
        "huggingface.co/datasets/nvidia/SPEED-Bench there, or pass its path to --bench")
    (tmp_path / "speed_bench").mkdir()
    path = write(tmp_path / "speed_bench" / "qualitative.parquet", SAMPLE)
    assert resolve_bench("speed_bench:qualitative") == path
    # run.json's bench_sha256 is the parquet file's.
    from specbench_cli.files import sha256_of
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    for bad in ("speed_bench", "speed_bench:quality"):
        with pytest.raises(TaskError, match=rf"--bench {bad}: name a SPEED-Bench config: "
                                            r"speed_bench:qualitative, speed_bench:throughput_1k, "):
            resolve_bench(bad)


def test_spec_bench_files_keep_their_six_subtasks(tmp_path):
    cats = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
            "humanities", "translation", "summarization", "qa", "math_reasoning", "rag"]
    path = write_questions(tmp_path / "question.jsonl",
                           [{"question_id": i, "category": c, "turns": ["q"]}
                            for i, c in enumerate(cats)])
    assert [q.subtask for q in load_questions(path)] == ["mt_bench"] * 8 + [
        "translation", "summarization", "qa", "math_reasoning", "rag"]
    assert bench_subtasks(str(path)) == SUBTASKS == ["mt_bench", "translation", "summarization",
                                                     "qa", "math_reasoning", "rag"]
    assert api.checked_plan(checked_run_options({"bench": str(path)})).subtasks == SUBTASKS
    # A SPEED-Bench category in a Spec-Bench-shaped file says what to do.
    path = write_questions(tmp_path / "mine.jsonl",
                           [{"question_id": 1, "category": "multilingual", "turns": ["q"]}])
    with pytest.raises(TaskError, match=r"unknown category 'multilingual'; known: writing, .*"
                                        r"\(a SPEED-Bench file\? give it a sub_category or source "
                                        r"field, or name it after its config"):
        load_questions(path)


# ---------------------------------------------------------------- metrics and report

def line(qid, category, new_tokens, wall_time, method):
    """An answer line as runner.answer_line writes it (greedy, equal to vanilla's)."""
    return {"question_id": qid, "category": category, "answer_id": f"{method}-{qid}-0",
            "model_id": f"tiny-{method}", "tstamp": 0.0,
            "choices": [{"index": 0, "turns": ["..."], "decoding_steps": [1],
                         "new_tokens": [new_tokens], "wall_time": [wall_time],
                         "accept_lengths": [new_tokens]}],
            "method": method, "subtask": category, "repeat": 0,
            "token_ids": [[qid]]}


# tokens/s per question: coding vanilla 10, pld 20 (2x); math 5 → 20 (4x); writing 5 → 5 (1x)
SPEED_RUN = {"vanilla": [line(1, "writing", 10, 2.0, "vanilla"),
                         line(2, "math", 20, 4.0, "vanilla"),
                         line(3, "coding", 10, 1.0, "vanilla")],
             "pld": [line(1, "writing", 10, 2.0, "pld"), line(2, "math", 20, 1.0, "pld"),
                     line(3, "coding", 10, 0.5, "pld")]}


def test_metrics_give_each_category_its_subtask_in_the_dataset_order():
    s = summarize(SPEED_RUN)
    assert s["subtasks"] == ["coding", "math", "writing"]
    assert s["methods"]["pld"]["speedup"] == pytest.approx({"coding": 2.0, "math": 4.0,
                                                             "writing": 1.0})
    assert s["methods"]["pld"]["speedup_overall"] == pytest.approx(45 / 20)
    throughput = {m: [line(i, cat, 10, 1.0, m) for i, cat in
                      enumerate(["high_entropy", "mixed", "low_entropy"], 1)]
                  for m in ("vanilla", "pld")}
    assert summarize(throughput)["subtasks"] == THROUGHPUT
    # Spec-Bench's answer files name no subtask: their categories map as Spec-Bench's do.
    spec = {m: [line(i, cat, 10, 1.0, m) for i, cat in
                enumerate(["writing", "rag", "translation"], 1)] for m in ("vanilla", "pld")}
    for rows in spec.values():
        for r in rows:
            del r["subtask"]
    assert summarize(spec)["subtasks"] == ["mt_bench", "translation", "rag"]


def test_report_shows_a_column_per_category(tmp_path):
    run = tmp_path / "run"
    (run / "answers").mkdir(parents=True)
    for name, rows in SPEED_RUN.items():
        (run / "answers" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({
        "config": {"model": "/models/tiny", "bench": "speed_bench:qualitative",
                   "methods": ["vanilla", "pld"], "max_new_tokens": 64, "repeats": 1,
                   "warmup": 0, "dtype": "fp32", "device": "cpu", "limit": None},
        "environment": {"cpu": "Test CPU", "gpu": None, "torch_threads": 2, "cpu_count": 2},
        "model_parameters": 1_000_000,
        "methods": {"vanilla": {"overhead": {"params": 0, "bytes": 0}},
                    "pld": {"overhead": {"params": 0, "bytes": 0}}}}))
    result = CliRunner().invoke(app, ["report", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(l for l in lines if "method" in l and "overall" in l)
    assert [c.strip() for c in header.strip("┃ ").split("┃")][:5] == [
        "method", "Code", "Mth", "Write", "overall"]
    pld = next(l for l in lines if "│ pld" in l)
    assert [c.strip() for c in pld.strip("│ ").split("│")][:5] == [
        "pld", "2.00x", "4.00x", "1.00x", "2.25x"]
    assert "columns: Code = coding, Mth = math, Write = writing" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["subtasks"] == ["coding", "math", "writing"]


def test_every_subtask_has_a_column_name_of_its_own():
    assert set(SHORT) == set(KNOWN_SUBTASKS)
    assert len(set(SHORT.values())) == len(SHORT)
    assert [SHORT[s] for s in SUBTASKS] == ["MT", "Trans", "Sum", "QA", "Math", "RAG"]
    assert SPEED_CONFIGS["qualitative"] == QUALITATIVE
    assert {c: SPEED_CONFIGS[c] for c in SPEED_CONFIGS if c != "qualitative"} == {
        f"throughput_{k}": THROUGHPUT for k in ("1k", "2k", "8k", "16k", "32k")}


def test_list_shows_speed_bench_configs():
    result = CliRunner().invoke(app, ["list"], terminal_width=400)
    assert result.exit_code == 0
    table = result.output[result.output.index("SPEED-Bench configs"):]
    assert "throughput_32k │ low_entropy (LowEnt), mixed (Mixed), high_entropy (HighEnt)" in table
    assert "qualitative    │ coding (Code), humanities (Hum), math (Mth)," in table
    assert "speed_bench:CONFIG" in result.output


def test_a_run_on_a_speed_bench_file(tiny_model_dir, tmp_path):
    """`specbench run --bench FILE.parquet`: placeholders said and left out, answers keyed by
    row number and named by category, run.json holding the parquet file's sha256."""
    path = write(tmp_path / "test.parquet", SAMPLE)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, pinned_run([
        "run", "--model", tiny_model_dir, "--bench", path, "--methods", "pld", "--tasks",
        "coding,writing", "--max-new-tokens", 4, "--warmup", 0, "--out", out]))
    assert result.exit_code == 0, result.output
    assert NOTE.format(name="test.parquet", n=2, total=6) in result.stderr
    answers = [json.loads(l) for l in (out / "answers" / "pld.jsonl").read_text().splitlines()]
    assert [(a["question_id"], a["subtask"]) for a in answers] == [
        (1, "coding"), (4, "writing"), (6, "coding")]
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["bench_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["subtasks"] == ["coding", "writing"]
    assert json.loads((out / "summary.json").read_text())["subtasks"] == ["coding", "writing"]
