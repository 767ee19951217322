"""Question files: parsing, subtask mapping, selection, verified download, clear errors."""

import hashlib
import json

import pytest

from specbench_cli.bench import questions as tasks
from specbench_cli.bench.questions import (SUBTASKS, TaskError, download_verified, load_questions,
                                 parse_subtasks, select)

from conftest import OFFICIAL_QUESTIONS, write_questions


def rows(*cats):
    return [{"question_id": i, "category": c, "turns": [f"question {i}"]} for i, c in enumerate(cats)]


def test_categories_map_to_subtasks_and_limit_takes_first_n_each(tmp_path):
    path = write_questions(tmp_path / "q.jsonl", rows("writing", "coding", "qa", "qa", "qa", "rag"))
    qs = load_questions(path)
    assert [q.subtask for q in qs] == ["mt_bench", "mt_bench", "qa", "qa", "qa", "rag"]
    picked = select(qs, ["mt_bench", "qa"], limit=2)
    assert [q.question_id for q in picked] == [0, 1, 2, 3]


@pytest.mark.parametrize("line, message", [
    ('{"question_id": 1, "category": "qa", "turns": ["a"]', r"q.jsonl:2: malformed JSON"),
    ('{"question_id": 1, "category": "qa", "turns": []}', r"q.jsonl:2: question 1 has no turns"),
    ('{"question_id": 1, "category": "poetry", "turns": ["a"]}',
     r"q.jsonl:2: unknown category 'poetry'; known: writing, roleplay"),
    ('{"question_id": "x", "category": "qa", "turns": ["a"]}', r"question_id must be an integer"),
    ('{"question_id": 0, "category": "qa", "turns": ["a"]}', r"q.jsonl:2: duplicate question_id 0"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(rows("qa")[0]) + "\n" + line + "\n")
    with pytest.raises(TaskError, match=message):
        load_questions(path)


def test_selection_errors():
    with pytest.raises(TaskError, match="unknown subtask 'poems'; valid: mt_bench, translation"):
        parse_subtasks("qa,poems")
    with pytest.raises(TaskError, match="--limit must be at least 1"):
        select([], SUBTASKS, 0)
    assert parse_subtasks("all") == SUBTASKS


def test_download_checks_sha256_and_keeps_nothing_bad(tmp_path):
    src = tmp_path / "remote.jsonl"
    src.write_text('{"question_id": 1, "category": "qa", "turns": ["a"]}\n')
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "question.jsonl"
    with pytest.raises(TaskError, match="checksum mismatch .* expected 0000"):
        download_verified(src.as_uri(), dest, "0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())
    assert download_verified(src.as_uri(), dest, good).read_bytes() == src.read_bytes()


def test_official_file_is_taken_from_the_cache_when_verified(tmp_path, monkeypatch):
    if not OFFICIAL_QUESTIONS.exists():
        pytest.skip("official question file not present")
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    # No network: the "download" is the local copy through a file:// URL, checksum-verified.
    monkeypatch.setitem(tasks.SUITE, "url", OFFICIAL_QUESTIONS.as_uri())
    path = tasks.resolve_bench("spec_bench")
    qs = load_questions(path)
    assert len(qs) == 480
    counts = {s: sum(q.subtask == s for q in qs) for s in SUBTASKS}
    assert counts == {s: 80 for s in SUBTASKS}
    assert all(len(q.turns) == 2 for q in qs if q.subtask == "mt_bench")


def test_official_file_given_by_path_is_cached_for_offline_spec_bench(tmp_path, monkeypatch):
    if not OFFICIAL_QUESTIONS.exists():
        pytest.skip("official question file not present")
    import urllib.request
    from specbench_cli.bench.questions import resolve_bench
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(TaskError, match="no network; pass the file's path to --bench"):
        resolve_bench("spec_bench")
    other = write_questions(tmp_path / "mine.jsonl", [{"question_id": 1, "category": "qa",
                                                       "turns": ["Who?"]}])
    assert resolve_bench(str(other)) == other
    assert not (tmp_path / "spec_bench" / "question.jsonl").exists()    # not the official file
    assert resolve_bench(str(OFFICIAL_QUESTIONS)) == OFFICIAL_QUESTIONS
    cached = resolve_bench("spec_bench")
    assert cached == tmp_path / "spec_bench" / "question.jsonl"
    assert cached.read_bytes() == OFFICIAL_QUESTIONS.read_bytes()
