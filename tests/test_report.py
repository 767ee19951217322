"""Reports, exports, plots, published rows, Spec-Bench imports and the regression gate, on small
hand-written answer files whose every number is worked out below."""

from __future__ import annotations

import io
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_char_tokenizer
from typer.testing import CliRunner

from specbench_cli.cli import app
from specbench_cli.analysis.compare import PUBLISHED_DIR, load_baseline, model_key
from specbench_cli.analysis.metrics import bootstrap_ci, paired_speedup

MODEL = "/models/tiny-llama"


def line(qid, category, new_tokens, wall_time, accept, tokens, repeat, method):
    """A Spec-Bench answer line plus our fields (repeat, token ids)."""
    return {"question_id": qid, "category": category, "answer_id": f"{method}-{qid}-{repeat}",
            "model_id": f"tiny-llama-{method}", "tstamp": 0.0,
            "choices": [{"index": 0, "turns": ["..."], "decoding_steps": [len(accept)],
                         "new_tokens": new_tokens, "wall_time": wall_time,
                         "accept_lengths": accept}],
            "method": method, "repeat": repeat, "token_ids": tokens}


# Throughputs (tokens/s) per question and repeat:
#            q1 (qa)  q2 (qa)  q3 (rag)
# vanilla r0   10        5        5
# vanilla r1    5        5       10
# pld     r0   20       10       10
# pld     r1   20       10        8
VANILLA = {0: [(10, 1.0), (20, 4.0), (10, 2.0)], 1: [(10, 2.0), (20, 4.0), (10, 1.0)]}
PLD = {0: [(10, 0.5), (20, 2.0), (10, 1.0)], 1: [(10, 0.5), (20, 2.0), (10, 1.25)]}
PLD_ACCEPT = [[3, 3, 4], [1, 2, 5, 2, 5, 5], [5, 5]]        # 40 tokens in 11 steps
QUESTIONS = [(1, "qa"), (2, "qa"), (3, "rag")]


def answers() -> dict[str, list[dict]]:
    out = {"vanilla": [], "pld": []}
    for r in (0, 1):
        for (qid, cat), (n, t) in zip(QUESTIONS, VANILLA[r]):
            out["vanilla"].append(line(qid, cat, [n], [t], [1] * n, [[qid]], r, "vanilla"))
        for (qid, cat), (n, t), acc in zip(QUESTIONS, PLD[r], PLD_ACCEPT):
            same = not (qid == 2 and r == 0)          # one answer differs from vanilla
            out["pld"].append(line(qid, cat, [n], [t], acc, [[qid if same else 99]], r, "pld"))
    return out


def write_run(folder: Path, data: dict[str, list[dict]], model: str = MODEL) -> Path:
    (folder / "answers").mkdir(parents=True)
    for name, rows in data.items():
        (folder / "answers" / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    meta = {"config": {"model": model, "bench": "builtin", "methods": list(data),
                       "max_new_tokens": 64, "repeats": 2, "warmup": 0, "dtype": "fp32",
                       "device": "cpu", "limit": 3},
            "environment": {"cpu": "Test CPU", "gpu": None, "torch_threads": 2, "cpu_count": 2},
            "model_parameters": 1_000_000,
            "methods": {"vanilla": {"overhead": {"params": 0, "bytes": 0}},
                        "pld": {"overhead": {"params": 0, "bytes": 0}}}}
    (folder / "run.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run", answers())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and pattern in " ".join(result.stderr.split()), \
        result.stderr


# Expected numbers, from the table above.
GEO = [math.sqrt(2 * 4), 2.0, math.sqrt(2 * 0.8)]        # per question, over its repeats
EXPECTED_PAIRED = math.exp(statistics.mean(map(math.log, GEO)))


def test_summary_json_numbers_exact(run_dir):
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    pld = json.loads((run_dir / "summary.json").read_text())["methods"]["pld"]
    # Spec-Bench speedup per repeat: r0 (40/3)/(20/3) = 2.0, r1 (38/3)/(20/3) = 1.9
    assert pld["speedup_by_repeat"] == pytest.approx([2.0, 1.9])
    assert pld["speedup_overall"] == pytest.approx(1.95)
    assert pld["speedup_std"] == pytest.approx(statistics.stdev([2.0, 1.9]))
    # qa: r0 15/7.5 = 2, r1 15/5 = 3; rag: r0 10/5 = 2, r1 8/10 = 0.8
    assert pld["speedup"] == pytest.approx({"qa": 2.5, "rag": 1.4})
    assert pld["mean_accepted_overall"] == pytest.approx(40 / 11)    # pooled, step-weighted
    assert pld["mean_accepted"] == pytest.approx({"qa": 30 / 9, "rag": 5.0})
    assert pld["ctar"] == pytest.approx({"1": 10 / 11, "2": 8 / 11, "3": 6 / 11, "4": 5 / 11})
    assert pld["tokens_per_s"] == pytest.approx(78 / 6)
    eq = pld["equal_to_vanilla"]
    assert (eq["share"], eq["compared"], eq["first_diff"]) == (pytest.approx(5 / 6), 6, 2)
    paired = pld["paired_speedup"]
    assert paired["mean"] == pytest.approx(EXPECTED_PAIRED)
    assert paired["questions"] == 3 and paired["resamples"] == 2000 and paired["seed"] == 0
    # The interval is the seeded percentile bootstrap of the mean log-ratio over questions.
    logs = np.log(GEO)
    idx = np.random.default_rng(0).integers(0, 3, size=(2000, 3))
    lo, hi = np.exp(np.percentile(logs[idx].mean(axis=1), [2.5, 97.5]))
    assert paired["ci95"] == pytest.approx([lo, hi])
    assert min(GEO) <= paired["ci95"][0] <= EXPECTED_PAIRED <= paired["ci95"][1] <= max(GEO)
    assert json.loads((run_dir / "summary.json").read_text())["missing"] == {}


def test_table_shows_every_number(run_dir):
    result = invoke("report", run_dir)
    text = result.stdout
    row = next(l for l in text.splitlines() if "│ pld" in l)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == ["pld", "2.50x", "1.40x", "1.95x", "± 0.07",
                     f"{EXPECTED_PAIRED:.2f} [{paired_ci()[0]:.2f}, {paired_ci()[1]:.2f}]",
                     "3.64", "13.0", "0", "83% (first diff q2)", "0%", "17%"]
    header = next(l for l in text.splitlines() if "method" in l and "QA" in l)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "method", "QA", "RAG", "overall", "± std", "paired [95% CI]", "MAT", "tok/s", "overhead",
        "equal", "near-tie", "mismatch"]   # some answer differs: the split is shown


def paired_ci():
    data = answers()
    return paired_speedup(data["pld"], data["vanilla"])["ci95"]


def test_csv_json_markdown_exports(run_dir):
    csv = invoke("report", run_dir, "--format", "csv")
    frame = pd.read_csv(io.StringIO(csv.stdout))
    pld = frame.set_index("method").loc["pld"]
    assert pld["overall"] == pytest.approx(1.95) and pld["QA"] == pytest.approx(2.5)
    assert pld["MAT"] == pytest.approx(40 / 11) and pld["equal"] == pytest.approx(5 / 6)
    assert pld["std"] == pytest.approx(statistics.stdev([2.0, 1.9]))
    assert pld["paired"] == pytest.approx(EXPECTED_PAIRED)
    assert not pld["published"]
    rows = json.loads(invoke("report", run_dir, "--format", "json").stdout)
    assert [r["method"] for r in rows] == ["vanilla", "pld"]
    assert rows[1]["overall"] == pytest.approx(1.95) and rows[1]["first_diff"] == 2
    md = invoke("report", run_dir, "--format", "markdown").stdout.splitlines()
    assert md[0] == ("| method | QA | RAG | overall | ± std | paired [95% CI] | MAT | tok/s | "
                     "overhead | equal | near-tie | mismatch |")
    assert md[1].startswith("| --- | ---: |")
    assert md[3].startswith("| pld | 2.50x | 1.40x | 1.95x | ± 0.07 |")
    one_line_error(invoke("report", run_dir, "--format", "html"), "--format 'html'")


def test_bootstrap_is_seeded():
    values = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_ci([2.0]) is None                       # one question: no interval


def test_two_runs_side_by_side_and_published_rows(run_dir, tmp_path):
    other = write_run(tmp_path / "other", answers())
    result = invoke("report", run_dir, other, "--published", "spec_bench_a100_vicuna7b",
                    "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["run"].unique()) == ["run", "other", "Spec-Bench A100"]
    published = frame[frame["published"]]
    medusa = published.set_index("method").loc["medusa"]
    assert medusa["overall"] == 1.71 and medusa["MAT"] == 2.31 and medusa["params"] == 591413248
    table = invoke("report", run_dir, other, "--published", "spec_bench_a100_vicuna7b").stdout
    assert "Spec-Bench A100 *" in table and "Spec-Bench A100 * published" in table
    assert "acceptance details · run" in table and "acceptance details · other" in table
    md = invoke("report", run_dir, "--published", "kangaroo_paper_vicuna7b",
                "--format", "markdown").stdout
    assert "| Kangaroo paper (published) | kangaroo |" in md and "1.68x" in md


def test_published_files_load_and_name_their_source():
    names = sorted(p.stem for p in PUBLISHED_DIR.glob("*.yaml"))
    assert names == ["kangaroo_paper_vicuna7b", "spec_bench_3090_vicuna7b",
                     "spec_bench_a100_vicuna7b"]
    for name in names:
        doc = load_baseline(name)
        assert doc["kind"] == "published" and doc["source"]["url"].startswith("https://")
    a100 = load_baseline("spec_bench_a100_vicuna7b")["methods"]
    assert a100["pld"]["speedup"]["summarization"] == 2.66
    assert a100["eagle2"]["speedup_overall"] == 2.36
    assert load_baseline("kangaroo_paper_vicuna7b")["methods"]["kangaroo"]["overhead"]["params"] \
        == 4 * 4096 ** 2 + 2 * 4096


def test_plots_write_four_figures(run_dir):
    result = invoke("report", run_dir, "--plots")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert files == sorted(f"{n}.{s}" for n in ("speedup_by_subtask", "speedup_vs_accepted",
                                               "accept_lengths", "overhead_vs_speedup")
                           for s in ("png", "svg"))
    for f in (run_dir / "plots").glob("*.png"):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny-llama" in (run_dir / "plots" / "speedup_by_subtask.svg").read_text()


# ---------------------------------------------------------------- declared method statistics

HIT_RATE = {"label": "hit rate", "count": "hits", "per": "rounds", "scale": 100, "unit": "%",
            "help": "share of steps with a datastore match"}
RETRIEVAL = {"label": "retr ms", "count": "retrieval_seconds", "per": "rounds", "scale": 1000,
             "unit": "ms", "help": "mean retrieval time per step"}


def with_statistics(folder: Path) -> Path:
    """pld's 6 answers (3 questions, 2 repeats) with one turn each of 2 rounds, 5 drafted tokens,
    hits 0, 1, 2, 0, 1, 2 and 3 ms of retrieval: 6 hits of 12 rounds, 18 ms over 12 rounds."""
    data = answers()
    for i, row in enumerate(data["pld"]):
        row["stats"] = [{"rounds": 2, "drafted": 5, "hits": i % 3, "retrieval_seconds": 0.003}]
    run = write_run(folder, data)
    meta = json.loads((run / "run.json").read_text())
    meta["methods"]["pld"]["statistics"] = [HIT_RATE, RETRIEVAL]
    (run / "run.json").write_text(json.dumps(meta))
    return run


def details_row(text: str, method: str) -> list[str]:
    after = text[text.index("acceptance details"):]
    row = next(l for l in after.splitlines() if l.startswith(f"│ {method} "))
    return [c.strip() for c in row.split("│")[1:-1]]


def test_declared_statistics_exact(tmp_path):
    run = with_statistics(tmp_path / "run")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    pld = json.loads((run / "summary.json").read_text())["methods"]["pld"]
    assert pld["statistics"] == [
        {"label": "hit rate", "value": pytest.approx(50.0), "unit": "%", "help": HIT_RATE["help"]},
        {"label": "retr ms", "value": pytest.approx(1.5), "unit": "ms", "help": RETRIEVAL["help"]}]
    assert pld["stats"]["mean_draft_length"] == pytest.approx(30 / 12)
    text = result.stdout
    header = next(l for l in text[text.index("acceptance details"):].splitlines() if "┃" in l)
    assert [c.strip() for c in header.strip("┃ ").split("┃")][-3:] == ["draft len", "hit rate",
                                                                       "retr ms"]
    assert details_row(text, "pld")[-3:] == ["2.50", "50%", "1.500"]
    assert details_row(text, "vanilla")[-3:] == ["–", "", ""]      # declares none: blank
    flat = " ".join(text.split())
    assert ("hit rate: share of steps with a datastore match (100 × Σ hits / Σ rounds over all "
            "turns, in %)") in flat
    assert "retr ms: mean retrieval time per step (1000 × Σ retrieval_seconds / Σ rounds" in flat


def test_runs_without_declarations_show_no_statistic_columns(run_dir, tmp_path):
    text = invoke("report", run_dir).stdout
    assert details_row(text, "pld")[-2:] == ["22", "–"]           # steps, draft len: nothing after
    assert json.loads((run_dir / "summary.json").read_text())["methods"]["pld"]["statistics"] == []
    imported = invoke("report", specbench_folder(tmp_path / "sb"))
    assert imported.exit_code == 0 and details_row(imported.stdout, "pld-float16")[-1] == "–"


def test_no_method_is_named_in_metrics_or_report():
    """Method statistics come from the methods' declarations, not from names in these modules."""
    package = Path(__file__).resolve().parents[1] / "specbench_cli" / "analysis"
    for module in ("metrics.py", "report.py", "results.py"):
        text = (package / module).read_text(encoding="utf-8")
        for word in ("kangaroo", "η", "hit rate", "hits\"", "stopped_by_threshold", "REST",
                     "retrieval_"):
            assert word not in text.replace("Kangaroo", "kangaroo"), (module, word)


# ---------------------------------------------------------------- --counting spec_bench

# Vanilla's answer texts: the character tokenizer makes a token of each character and adds no
# BOS, so Spec-Bench's count, len(tokenizer(text).input_ids) - 1 a turn, is one less than the
# characters of each turn: q1 11 - 1 = 10, q2 (two turns) 1 + 3 = 4, q3 10.
TEXTS = {1: ["hello world"], 2: ["ab", "cdef"], 3: ["speculative"]}
RECOUNTED = {1: 10, 2: 4, 3: 10}


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    make_char_tokenizer(folder)
    return folder


def with_texts(data: dict[str, list[dict]]) -> dict[str, list[dict]]:
    for row in data["vanilla"]:
        row["choices"][0]["turns"] = TEXTS[row["question_id"]]
    return data


def counting_run(folder: Path, model: str = MODEL) -> Path:
    """The run above with vanilla's texts, and pld's q3 of repeat 1 not answered (speed.py
    reads every answer of each file; ids pair questions)."""
    data = with_texts(answers())
    data["pld"] = [r for r in data["pld"] if (r["question_id"], r["repeat"]) != (3, 1)]
    return write_run(folder, data, model=model)


def speed_py(method_rows, base_rows, tokenizer, categories) -> float:
    """Spec-Bench's evaluation/speed.py, speed() and the mean report over runs (our repeats)."""
    ratios = []
    for repeat in (0, 1):
        speeds = [sum(r["choices"][0]["new_tokens"]) / sum(r["choices"][0]["wall_time"])
                  for r in method_rows if r["repeat"] == repeat and r["category"] in categories]
        speeds0 = [sum(len(tokenizer(t).input_ids) - 1 for t in r["choices"][0]["turns"])
                   / sum(r["choices"][0]["wall_time"])
                   for r in base_rows if r["repeat"] == repeat and r["category"] in categories]
        ratios.append(np.array(speeds).mean() / np.array(speeds0).mean())
    return float(np.mean(ratios))


def test_spec_bench_counting_reproduces_speed_py(tmp_path, char_tokenizer):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(char_tokenizer))
    assert {q: sum(len(tokenizer(t).input_ids) - 1 for t in texts)
            for q, texts in TEXTS.items()} == RECOUNTED
    run = counting_run(tmp_path / "run")
    rows = {m: [json.loads(l) for l in (run / "answers" / f"{m}.jsonl").read_text().splitlines()]
            for m in ("vanilla", "pld")}
    result = invoke("report", run, "--counting", "spec_bench", "--tokenizer", char_tokenizer,
                    "--format", "json")
    assert result.exit_code == 0, result.output
    pld = json.loads(result.stdout)[1]
    # By hand: vanilla tokens/s r0 10/1, 4/4, 10/2 (mean 16/3), r1 10/2, 4/4, 10/1 (16/3);
    # pld r0 20, 10, 10 (40/3), r1 20, 10 (15): overall mean(2.5, 2.8125); qa mean(15/5.5, 15/3);
    # rag: repeat 0 only (10/5), pld has no rag answer in repeat 1.
    assert pld["overall"] == pytest.approx((2.5 + 45 / 16) / 2)
    assert pld["QA"] == pytest.approx((15 / 5.5 + 5) / 2) and pld["RAG"] == pytest.approx(2.0)
    assert pld["overall"] == pytest.approx(speed_py(rows["pld"], rows["vanilla"], tokenizer,
                                                    ("qa", "rag")))
    assert pld["QA"] == pytest.approx(speed_py(rows["pld"], rows["vanilla"], tokenizer, ("qa",)))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counting"] == "spec_bench"
    assert summary["methods"]["pld"]["speedup_by_repeat"] == pytest.approx([2.5, 45 / 16])
    # The baseline's own row: its ids (10/1, 20/4, 10/2: mean 20/3) over the recount (16/3).
    assert summary["methods"]["vanilla"]["speedup_overall"] == pytest.approx(1.25)
    # ids stay the default, over the questions both answered: r1 (20 + 10) / 2 over (5 + 5) / 2.
    ids = json.loads(invoke("report", run, "--format", "json").stdout)[1]
    assert ids["overall"] == pytest.approx((2.0 + 3.0) / 2)
    assert json.loads((run / "summary.json").read_text())["counting"] == "ids"


def test_spec_bench_counting_is_named_and_finds_the_run_model_tokenizer(tmp_path, char_tokenizer):
    model = Path(shutil.copytree(char_tokenizer, tmp_path / "model"))
    (model / "config.json").write_text("{}")       # a model folder, as far as a run knows
    run = counting_run(tmp_path / "run", model=str(model))
    table = invoke("report", run, "--counting", "spec_bench")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "speedups by Spec-Bench's token counting (speed.py)" in text        # the caption
    assert "re-tokenizing each answer turn's text less one a turn" in text      # the definition
    assert "counted from ids" not in text
    assert "2.66x" in text and "counted from ids" in " ".join(invoke("report", run).stdout.split())


def test_spec_bench_counting_in_compare(tmp_path, char_tokenizer):
    run = write_run(tmp_path / "run", with_texts(answers()))
    options = ("--counting", "spec_bench", "--tokenizer", char_tokenizer)
    saved = tmp_path / "sb.yaml"
    assert invoke("compare", "--save", run, saved, *options).exit_code == 0
    doc = yaml.safe_load(saved.read_text())
    # r0 (40/3)/(16/3) = 2.5, r1 (38/3)/(16/3) = 2.375
    assert doc["counting"] == "spec_bench"
    assert doc["methods"]["pld"]["speedup_overall"] == pytest.approx((2.5 + 2.375) / 2)
    assert invoke("compare", run, saved, *options).exit_code == 0
    assert invoke("compare", run, run, *options).exit_code == 0      # a run as the baseline
    mixed = invoke("compare", run, saved)       # ids (1.95x) against spec_bench (2.44x)
    assert mixed.exit_code == 1
    assert "counting differs: baseline spec_bench, run ids" in " ".join(mixed.stdout.split())


def test_spec_bench_counting_errors(run_dir, char_tokenizer):
    one_line_error(invoke("report", run_dir, "--counting", "spec_bench"),
                   "--counting spec_bench needs the model's tokenizer (model folder "
                   f"{MODEL} does not exist); pass --tokenizer PATH")
    one_line_error(invoke("compare", run_dir, run_dir, "--counting", "spec_bench"),
                   "--counting spec_bench needs the model's tokenizer")
    one_line_error(invoke("report", run_dir, "--counting", "words"),
                   "--counting 'words': choose one of ids, spec_bench")
    one_line_error(invoke("report", run_dir, "--tokenizer", char_tokenizer),
                   "--tokenizer is for --counting spec_bench")


# ---------------------------------------------------------------- compare

@pytest.fixture
def saved(run_dir, tmp_path) -> Path:
    path = tmp_path / "baseline.yaml"
    result = invoke("compare", "--save", run_dir, path)
    assert result.exit_code == 0, result.output
    return path


def test_save_round_trips(run_dir, saved):
    doc = yaml.safe_load(saved.read_text())
    assert doc["kind"] == "regression" and doc["model"] == MODEL and doc["machine"] == "2-core CPU"
    assert "specbench run" in doc["command"] and "--repeats 2" in doc["command"]
    assert doc["methods"]["pld"]["speedup_overall"] == pytest.approx(1.95)
    assert doc["methods"]["pld"]["mean_accepted_overall"] == 40 / 11      # stored unrounded
    assert doc["methods"]["pld"]["equal_to_vanilla"] == 5 / 6
    result = invoke("compare", run_dir, saved, "--speedup-tolerance", "0",
                    "--accepted-tolerance", "0")
    assert result.exit_code == 0, result.output
    assert "no regression" in result.stdout
    json_path = saved.with_suffix(".json")
    assert invoke("compare", "--save", run_dir, json_path).exit_code == 0
    assert json.loads(json_path.read_text())["methods"] == doc["methods"]
    assert invoke("compare", run_dir, json_path).exit_code == 0


def slower(data):            # pld 20% slower everywhere: speedup 1.95 → 1.625
    for row in data["pld"]:
        row["choices"][0]["wall_time"] = [t * 1.2 for t in row["choices"][0]["wall_time"]]


def a_bit_slower(data):      # 3% slower: 1.95 → 1.893, within the 0.1 tolerance
    for row in data["pld"]:
        row["choices"][0]["wall_time"] = [t * 1.03 for t in row["choices"][0]["wall_time"]]


def fewer_accepted(data):    # q3 takes 3 steps, not 2: MAT 80/22 → 80/24 over both repeats
    for row in data["pld"]:
        if row["question_id"] == 3:
            row["choices"][0]["accept_lengths"] = [5, 4, 1]


def unequal(data):           # another answer differs: 5/6 → 4/6
    data["pld"][3]["token_ids"] = [[42]]


def dropped_method(data):
    del data["pld"]


@pytest.mark.parametrize("change, code, reason", [
    (slower, 1, "speedup 1.62 < 1.95 − 0.1"),
    (fewer_accepted, 1, "MAT 3.33 < 3.64 − 0.02"),
    (unequal, 1, "equal 67% < 83%"),
    (dropped_method, 1, "not in the run"),
    (a_bit_slower, 0, "no regression"),
])
def test_compare_flags_planted_regressions(saved, tmp_path, change, code, reason):
    data = answers()
    change(data)
    run = write_run(tmp_path / "new", data)
    result = invoke("compare", run, saved)
    assert result.exit_code == code, result.output
    assert reason in " ".join(result.stdout.replace("│", " ").split()), result.stdout
    if code:
        assert "REGRESSION" in result.stdout


def test_compare_against_a_run_directory(run_dir, tmp_path):
    data = answers()
    slower(data)
    assert invoke("compare", run_dir, run_dir).exit_code == 0
    assert invoke("compare", write_run(tmp_path / "slow", data), run_dir).exit_code == 1


def test_compare_with_published_numbers_gates_shared_methods_only(tmp_path):
    run = write_run(tmp_path / "vicuna", answers(), model="/models/vicuna-7b-v1.3")
    result = invoke("compare", run, "spec_bench_a100_vicuna7b")
    assert result.exit_code == 0, result.output          # pld 1.95x ≥ 1.66x − 0.1
    text = " ".join(result.stdout.split())
    assert "published only, not in the run: eagle2, sps, medusa, rest" in text
    assert "not in the baseline (not gated): vanilla" in text


def test_model_key_ignores_where_a_model_lies():
    assert model_key("lmsys/vicuna-7b-v1.3") == model_key("/data/models/vicuna-7b-v1.3/")
    assert model_key("/home/a/.cache/specbench/builtin-abc123/model") == "builtin-abc123/model"
    assert model_key("/x/builtin-abc123/model") != model_key("/x/builtin-def456/model")


# ---------------------------------------------------------------- bad input

def test_baseline_of_another_model_is_an_error(run_dir, saved, tmp_path):
    other = write_run(tmp_path / "other-model", answers(), model="lmsys/vicuna-7b-v1.3")
    one_line_error(invoke("compare", other, saved),
                   f"is for model {MODEL}, but {other} ran lmsys/vicuna-7b-v1.3")
    one_line_error(invoke("compare", run_dir, "spec_bench_a100_vicuna7b"),
                   "is for model lmsys/vicuna-7b-v1.3")


def test_differing_question_sets_are_named(tmp_path, saved):
    data = answers()
    data["pld"] = [r for r in data["pld"] if (r["question_id"], r["repeat"]) != (3, 1)]
    data["vanilla"] = [r for r in data["vanilla"] if (r["question_id"], r["repeat"]) != (1, 0)]
    run = write_run(tmp_path / "partial", data)
    report = invoke("report", run)
    assert report.exit_code == 0                 # a run in progress can still be looked at
    assert "methods answered different questions: vanilla lacks q1 r1; pld lacks q3 r2" in \
        " ".join(report.stderr.split())
    one_line_error(invoke("compare", run, saved), "vanilla lacks q1 r1; pld lacks q3 r2")


def test_empty_runs_and_bad_baselines(tmp_path, run_dir):
    empty = tmp_path / "empty"
    (empty / "answers").mkdir(parents=True)
    one_line_error(invoke("report", empty), "no answers yet (empty run)")
    one_line_error(invoke("compare", empty, run_dir), "no answers yet (empty run)")
    (empty / "answers" / "vanilla.jsonl").write_text("")
    one_line_error(invoke("report", empty), "no answers yet (empty run)")
    one_line_error(invoke("compare", run_dir, tmp_path / "none.yaml"), "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [1, 2]\n")
    one_line_error(invoke("compare", run_dir, bad), "needs a 'methods' mapping")
    bad.write_text("methods: {pld: {speedup_overall: fast}}\n")
    one_line_error(invoke("compare", run_dir, bad), "methods.pld.speedup_overall must be a number")
    bad.write_text("methods: {pld: [\n")
    one_line_error(invoke("compare", run_dir, bad), "not YAML/JSON")
    one_line_error(invoke("compare", run_dir, run_dir, "--speedup-tolerance", "-1"),
                   "--speedup-tolerance must be 0 or more")
    one_line_error(invoke("report", run_dir, "--published", "nope"), "published name")


def test_ci_baseline_is_a_real_builtin_baseline(run_dir, tmp_path):
    """The committed CI baseline holds numbers for every method on the built-in benchmark, and a
    placeholder baseline (as it was before one was measured) is refused."""
    path = Path(__file__).resolve().parents[1] / "baselines/ci/builtin-cpu.yaml"
    doc = yaml.safe_load(path.read_text())
    assert not doc.get("placeholder") and doc["machine"] == "2-core CPU"
    assert doc["bench"] == "builtin" and "builtin-" in doc["model"]
    from specbench_cli.methods import METHODS
    assert set(doc["methods"]) == set(METHODS)        # every registered method is gated
    assert all(m["equal_to_vanilla"] == 1.0 and m["mean_accepted_overall"] >= 1.0
               for m in doc["methods"].values())
    placeholder = tmp_path / "placeholder.yaml"
    placeholder.write_text(yaml.safe_dump({**doc, "placeholder": True}))
    one_line_error(invoke("compare", run_dir, placeholder), "is a placeholder")


# ---------------------------------------------------------------- Spec-Bench answer folders

def specbench_folder(folder: Path, names=("vicuna-7b-v1.3-vanilla-float16-temp-0.0",
                                          "vicuna-7b-v1.3-pld-float16")) -> Path:
    """Answer files as Spec-Bench's scripts write them: no run.json, repeat or token ids."""
    folder.mkdir()
    data = answers()
    for name, method in zip(names, ("vanilla", "pld")):
        rows = []
        for row in data[method]:
            if row["repeat"] == 0:
                row = {k: v for k, v in row.items() if k not in ("method", "repeat", "token_ids")}
                row["model_id"] = name
                rows.append(row)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_specbench_answer_folder_is_imported(tmp_path):
    folder = specbench_folder(tmp_path / "sb")
    result = invoke("report", folder, "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout)).set_index("method")
    assert list(frame.index) == ["vanilla-float16-temp-0.0", "pld-float16"]
    assert frame.loc["pld-float16", "overall"] == pytest.approx(2.0)
    assert frame.loc["pld-float16", "MAT"] == pytest.approx(40 / 11)
    assert pd.isna(frame.loc["pld-float16", "equal"])         # no token ids
    table = invoke("report", folder).stdout
    row = next(l for l in table.splitlines() if "│ pld-float16" in l)
    assert row.rstrip(" │").endswith("n/a")
    assert "imported Spec-Bench answers" in table and "vicuna-7b-v1.3" in table
    saved = tmp_path / "sb.yaml"
    assert invoke("compare", "--save", folder, saved).exit_code == 0
    assert yaml.safe_load(saved.read_text())["model"] == "vicuna-7b-v1.3"
    assert invoke("compare", folder, saved).exit_code == 0


def test_specbench_folder_without_a_clear_vanilla(tmp_path):
    folder = specbench_folder(tmp_path / "sb", names=("llama-ar", "llama-pld"))
    one_line_error(invoke("report", folder), "cannot tell which answer file is vanilla")
    one_line_error(invoke("report", folder, "--baseline-name", "llama-x"),
                   "--baseline-name 'llama-x' is none of")
    result = invoke("report", folder, "--baseline-name", "llama-ar", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == ["ar", "pld"] and rows[1]["overall"] == pytest.approx(2.0)
    bad = tmp_path / "notspec"
    bad.mkdir()
    (bad / "x-vanilla.jsonl").write_text('{"question_id": 1}\n')
    one_line_error(invoke("report", bad), "x-vanilla.jsonl:1: missing field 'category'")


def test_a_run_on_two_kinds_of_device_is_reported_device_by_device(tmp_path):
    """A sharded run whose workers had different devices: each device's speedups from its own
    answers only (q1 on the CPU: 10 → 20 tok/s, 2.00×; q2 on the GPU: 5 → 20 tok/s, 4.00×;
    pooled they would read 2.67×), and the regression gate refuses the mix."""
    data = {"vanilla": [line(1, "qa", [10], [1.0], [1] * 10, [[1]], 0, "vanilla"),
                        line(2, "qa", [20], [4.0], [1] * 20, [[2]], 0, "vanilla")],
            "pld": [line(1, "qa", [10], [0.5], [5, 5], [[1]], 0, "pld"),
                    line(2, "qa", [20], [1.0], [10, 10], [[2]], 0, "pld")]}
    for rows in data.values():
        rows[0]["worker"], rows[1]["worker"] = "w0", "w1"
    run = write_run(tmp_path / "mixed", data)
    meta = json.loads((run / "run.json").read_text())
    meta["workers"] = {"w0": {"id": "w0", "environment": {"cpu": "Test CPU", "gpu": None}},
                       "w1": {"id": "w1", "environment": {"cpu": "Test CPU", "gpu": "GPU X"}}}
    (run / "run.json").write_text(json.dumps(meta))
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert "mixed [Test CPU]" in result.output and "mixed [GPU X]" in result.output
    cpu = json.loads((run / "summary-Test_CPU.json").read_text())
    gpu = json.loads((run / "summary-GPU_X.json").read_text())
    assert cpu["methods"]["pld"]["speedup_overall"] == pytest.approx(2.0)
    assert gpu["methods"]["pld"]["speedup_overall"] == pytest.approx(4.0)
    assert gpu["device"]["gpu"] == "GPU X"
    for args in ((run, "spec_bench_a100_vicuna7b"), ("--save", run, tmp_path / "b.yaml")):
        gate = invoke("compare", *args)
        assert gate.exit_code == 2 and "2 kinds of device (Test CPU, GPU X)" in gate.output
