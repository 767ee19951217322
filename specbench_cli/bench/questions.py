"""Question files → Question records grouped into subtasks (the report's columns): Spec-Bench's
JSONL, its categories mapped to six subtasks, or SPEED-Bench's parquet/JSONL (speed_bench.py),
each category its own subtask."""

from __future__ import annotations

import itertools
import shutil
import urllib.request
from pathlib import Path

from ..files import json_lines, sha256_of, specbench_home
from .records import CATEGORY_TO_SUBTASK, KNOWN_SUBTASKS, SPEED_CONFIGS, SUBTASKS, SUITE, \
    Question, TaskError
from .speed_bench import config_file, file_config, is_speed_bench, load_speed_bench, \
    named_config


def parse_question(row, where: str) -> Question:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object")
    qid, category, turns = row.get("question_id"), row.get("category"), row.get("turns")
    if not isinstance(qid, int):
        raise TaskError(f"{where}: question_id must be an integer")
    if category not in CATEGORY_TO_SUBTASK:
        hint = " (a SPEED-Bench file? give it a sub_category or source field, or name it after " \
            "its config: qualitative.jsonl)" if category in KNOWN_SUBTASKS else ""
        raise TaskError(f"{where}: unknown category {category!r}; known: "
                        f"{', '.join(CATEGORY_TO_SUBTASK)}{hint}")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise TaskError(f"{where}: question {qid} has no turns (need a list of strings)")
    reference = row.get("reference")
    return Question(qid, category, tuple(turns), tuple(map(str, reference)) if reference else None,
                    subtask=CATEGORY_TO_SUBTASK[category])


def load_questions(path: Path) -> list[Question]:
    """A question file's questions: SPEED-Bench's (speed_bench.is_speed_bench) or Spec-Bench's."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"question file {path} does not exist")
    if is_speed_bench(path):
        return load_speed_bench(path)
    questions, seen = [], set()
    for lineno, row in json_lines(path, TaskError):
        q = parse_question(row, f"{path}:{lineno}")
        if q.question_id in seen:
            raise TaskError(f"{path}:{lineno}: duplicate question_id {q.question_id}")
        seen.add(q.question_id)
        questions.append(q)
    if not questions:
        raise TaskError(f"{path}: no questions")
    return questions


def parse_subtasks(spec: str | None, valid: list[str] = SUBTASKS) -> list[str]:
    """'mt_bench,summarization' → checked list; None or 'all' → all of `valid`: Spec-Bench's six,
    or what bench_subtasks says the bench has."""
    if spec is None or spec.strip() in ("", "all"):
        return list(valid)
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    for s in chosen:
        if s not in valid:
            raise TaskError(f"unknown subtask {s!r}; valid: {', '.join(valid)}")
    return chosen


def bench_subtasks(bench: str | None) -> list[str]:
    """The subtasks of a --bench value, as --tasks checks them: a SPEED-Bench config's
    categories (named, or read from the file's name or first row), else Spec-Bench's six (the
    built-in benchmark's too). A missing file is resolve_bench's error, later."""
    if config := named_config(bench):
        return list(SPEED_CONFIGS[config])
    path = Path(bench).expanduser() if bench not in (None, "builtin", "spec_bench") else None
    if path is not None and path.is_file() and is_speed_bench(path):
        return list(file_config(path)[1])
    return list(SUBTASKS)


def select(questions: list[Question], subtasks: list[str], limit: int | None) -> list[Question]:
    """Questions of the chosen subtasks in file order; `limit` keeps the first N of each."""
    if limit is not None and limit < 1:
        raise TaskError(f"--limit must be at least 1 (got {limit})")
    taken: dict[str, int] = {}
    out = []
    for q in questions:
        if q.subtask in subtasks and (limit is None or taken.get(q.subtask, 0) < limit):
            taken[q.subtask] = taken.get(q.subtask, 0) + 1
            out.append(q)
    if not out:
        present = dict.fromkeys(q.subtask for q in questions)
        raise TaskError(f"no questions of subtasks {', '.join(subtasks)} in this file (its "
                        f"subtasks: {', '.join(present)})")
    return out


def held_out(questions: list[Question], chosen: list[Question], subtasks: list[str],
             per_subtask: int = 5) -> list[Question]:
    """Up to `per_subtask` questions of each subtask that `chosen` leaves out (the first after
    them in file order), round-robin over the subtasks: what a method is tuned on before the
    timed run, so the tuning never sees the questions it is timed on. A subtask with none left
    lends its first chosen one."""
    taken = {q.question_id for q in chosen}
    spares = []
    for subtask in subtasks:
        mine = [q for q in questions if q.subtask == subtask]
        spares.append([q for q in mine if q.question_id not in taken][:per_subtask]
                      or [q for q in chosen if q.subtask == subtask][:1])
    return [q for round_ in itertools.zip_longest(*spares) for q in round_ if q is not None]


def download_verified(url: str, dest: Path, sha256: str) -> Path:
    """Fetch url into dest only if its sha256 matches; a bad download never lands in the cache."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 16):
                out.write(block)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise TaskError(f"download of {url} failed: {err}; pass the file's path to --bench "
                        "instead (the official file is then cached for later runs)") from None
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink()
        raise TaskError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}")
    tmp.replace(dest)
    return dest


def official_question_file() -> Path:
    """The official file from the cache, downloaded and verified when absent."""
    dest = specbench_home() / "spec_bench" / "question.jsonl"
    if dest.is_file() and sha256_of(dest) == SUITE["sha256"]:
        return dest
    return download_verified(SUITE["url"], dest, SUITE["sha256"])


def resolve_bench(bench: str) -> Path:
    """'spec_bench' → the official file; 'speed_bench:CONFIG' → that SPEED-Bench config's file in
    $SPECBENCH_HOME (speed_bench.config_file); otherwise a path to a question file. A path whose
    content is Spec-Bench's official file is also kept in the cache, so that `--bench spec_bench`
    works from then on without a network."""
    if bench == "spec_bench":
        return official_question_file()
    if config := named_config(bench):
        return config_file(config)
    path = Path(bench).expanduser()
    if not path.is_file():
        raise TaskError(f"--bench {bench}: no such file (or use 'spec_bench', "
                        "'speed_bench:CONFIG' or 'builtin')")
    cached = specbench_home() / "spec_bench" / "question.jsonl"
    if not cached.is_file() and sha256_of(path) == SUITE["sha256"]:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    return path
