"""Misuse a new user would try: each ends in one line naming the file or option and what was
expected, exit status 2, no traceback, and nothing already written is lost."""

import json

import pytest

from specbench_cli.errors import SpecbenchError
from specbench_cli.train.data import DataError, read_records

from conftest import write_questions
from test_cli import invoke

QUESTION = {"question_id": 1, "category": "qa", "turns": ["abc abc abc"]}


def one_line_error(result, *phrases):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert all(p in result.output for p in phrases), result.output


@pytest.mark.parametrize("content, byte", [
    (json.dumps({**QUESTION, "turns": ["caf\u00e9?"]}, ensure_ascii=False).encode("latin-1"),
     "0xe9"),
    (bytes(range(250, 256)) * 20, "0xfa")])
def test_a_question_file_that_is_not_utf8(tiny_model_dir, tmp_path, content, byte):
    bench = tmp_path / "q.jsonl"
    bench.write_bytes(content)
    result = invoke("run", "--model", tiny_model_dir, "--bench", bench, "--out", tmp_path / "r")
    one_line_error(result, f"{bench}:1: not UTF-8 text (byte {byte}")
    assert not (tmp_path / "r").exists()


def test_an_option_outside_its_range(tiny_model_dir, tmp_path):
    bench = write_questions(tmp_path / "q.jsonl", [QUESTION])
    for spec, says in (("pld.num_draft=-1", "must be at least 1 (got -1)"),
                       ("kangaroo.threshold=1.5", "must be in [0.0, 1.0] (got 1.5)"),
                       ("recycling.top_k=9", "must be in [1, 8] (got 9)")):
        method = spec.split(".")[0]
        result = invoke("run", "--model", tiny_model_dir, "--bench", bench, "--methods", method,
                        "--opt", spec, "--out", tmp_path / "r")
        one_line_error(result, f"--opt {spec}: {says}")
    result = invoke("run", "--model", tiny_model_dir, "--bench", bench, "--methods", "pld",
                    "--sweep", "pld.num_draft=4,0", "--out", tmp_path / "r")
    one_line_error(result, "--sweep pld.num_draft=4,0: must be at least 1 (got 0)")


def test_a_run_config_value_of_the_wrong_type(tiny_model_dir, tmp_path):
    bench = write_questions(tmp_path / "q.jsonl", [QUESTION])
    config = tmp_path / "run.yaml"
    for line, says in (("max-new-tokens: [1, 2]", "max-new-tokens must be int, got [1, 2]"),
                       ("breakdown: 3", "breakdown must be bool, got 3"),
                       ("limit: true", "limit must be int, got True"),
                       ("options: {pld: {num_draft: -3}}", "pld.num_draft: must be at least 1")):
        config.write_text(f"model: {tiny_model_dir}\nbench: {bench}\n{line}\n")
        result = invoke("run", "--config", config, "--out", tmp_path / "r")
        one_line_error(result, says)


def test_a_report_over_a_broken_answer_file_keeps_the_file(tiny_model_dir, tmp_path):
    bench = write_questions(tmp_path / "q.jsonl", [QUESTION, {**QUESTION, "question_id": 2}])
    out = tmp_path / "run"
    assert invoke("run", "--model", tiny_model_dir, "--bench", bench, "--methods", "vanilla,pld",
                  "--max-new-tokens", 8, "--warmup", 0, "--out", out).exit_code == 0
    answers = out / "answers" / "pld.jsonl"
    broken = answers.read_bytes()[:-15]             # a line cut off mid-way
    answers.write_bytes(broken)
    one_line_error(invoke("report", out), f"{answers}:2: malformed JSON")
    answers.write_bytes(broken.replace(b'"', b"\xff", 1))
    one_line_error(invoke("report", out), f"{answers}:1: not UTF-8 text")
    assert answers.read_bytes() == broken.replace(b'"', b"\xff", 1)     # left as it was


def test_training_data_that_is_not_utf8(tmp_path):
    data = tmp_path / "sharegpt.json"
    data.write_bytes(b'[{"conversations": [{"from": "human", "value": "caf\xe9"}]}]')
    with pytest.raises(DataError, match=r"sharegpt.json: not UTF-8 text \(byte 0xe9"):
        read_records(data)
    assert issubclass(DataError, SpecbenchError)
