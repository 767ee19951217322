"""Question files in Spec-Bench's format → Question records grouped into the six subtasks."""

from __future__ import annotations

import itertools
import shutil
import urllib.request
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from ..errors import SpecbenchError
from ..files import checked, json_lines, sha256_of, specbench_home

# Package data; the checkout's top-level tasks/ is a link to this folder.
SUITE_DIR = files("specbench_cli.bench") / "suites"


class TaskError(SpecbenchError):
    """Bad question file or selection; the message is one line for the user."""


def load_suite(name: str = "spec_bench") -> dict:
    """A suite definition (package data): its subtasks and the question categories of each."""
    path = SUITE_DIR / f"{name}.yaml"
    suite = checked(yaml.safe_load(path.read_text(encoding="utf-8")), {"subtasks": dict},
                    str(path), TaskError)
    for subtask, categories in suite["subtasks"].items():
        if not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)):
            raise TaskError(f"{path}: subtasks.{subtask} must be a list of category names")
    return suite


SUITE = load_suite()
SUBTASKS: list[str] = list(SUITE["subtasks"])
CATEGORY_TO_SUBTASK = {cat: sub for sub, cats in SUITE["subtasks"].items() for cat in cats}


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None

    @property
    def subtask(self) -> str:
        return CATEGORY_TO_SUBTASK[self.category]


def parse_question(row, where: str) -> Question:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object")
    qid, category, turns = row.get("question_id"), row.get("category"), row.get("turns")
    if not isinstance(qid, int):
        raise TaskError(f"{where}: question_id must be an integer")
    if category not in CATEGORY_TO_SUBTASK:
        raise TaskError(f"{where}: unknown category {category!r}; known: "
                        f"{', '.join(CATEGORY_TO_SUBTASK)}")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise TaskError(f"{where}: question {qid} has no turns (need a list of strings)")
    reference = row.get("reference")
    return Question(qid, category, tuple(turns), tuple(map(str, reference)) if reference else None)


def load_questions(path: Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"question file {path} does not exist")
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


def parse_subtasks(spec: str | None) -> list[str]:
    """'mt_bench,summarization' → checked list; None or 'all' → all six."""
    if spec is None or spec.strip() in ("", "all"):
        return list(SUBTASKS)
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    for s in chosen:
        if s not in SUBTASKS:
            raise TaskError(f"unknown subtask {s!r}; valid: {', '.join(SUBTASKS)}")
    return chosen


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
        raise TaskError(f"no questions of subtasks {', '.join(subtasks)} in this file")
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
    """'spec_bench' → the official file; otherwise a path to a file in its format. A path whose
    content is the official file is also kept in the cache, so that `--bench spec_bench` works
    from then on without a network."""
    if bench == "spec_bench":
        return official_question_file()
    path = Path(bench).expanduser()
    if not path.is_file():
        raise TaskError(f"--bench {bench}: no such file (or use 'spec_bench' / 'builtin')")
    cached = specbench_home() / "spec_bench" / "question.jsonl"
    if not cached.is_file() and sha256_of(path) == SUITE["sha256"]:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    return path
