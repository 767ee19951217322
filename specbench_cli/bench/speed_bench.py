"""SPEED-Bench question files (NVIDIA, 2026; huggingface.co/datasets/nvidia/SPEED-Bench) →
Question records, each category its own subtask (report column).

A config's file is parquet, as the dataset ships (reading it needs pyarrow), or JSONL with the
same fields a row: question_id (a string), category, sub_category, turns, source, src_id,
difficulty, multiturn. Rows whose turns must be fetched from other datasets ship as placeholders;
they are counted and left out (NVIDIA's specdec_bench prepare_data.py rebuilds them).

Question ids: answer files are keyed by an integer question_id and SPEED-Bench's ids are
strings, so a question's id here is its row number in the file (1: the first row; placeholder
rows count, so that numbers stay put when the file is rebuilt); the file's own id is kept as
Question.original_id.
"""

from __future__ import annotations

import itertools
import re
import sys
from os.path import commonprefix
from pathlib import Path
from typing import Iterator

from ..files import checked, json_lines, specbench_home
from .records import SPEED_CONFIGS, Question, TaskError

# What NVIDIA ships in place of a turn that must be fetched from another dataset.
PLACEHOLDER = "FULL BENCHMARK DATA SHOULD BE FETCHED FROM THE SOURCE USING SPECDEC_BENCH"
REBUILD = ("rebuild the file with NVIDIA's specdec_bench prepare_data.py "
           "(github.com/NVIDIA/Model-Optimizer, examples/specdec_bench)")
TEXT = (str, type(None))
ROW = {"question_id": (str, int), "category": str, "turns": list, "sub_category?": TEXT,
       "source?": TEXT, "src_id?": TEXT, "difficulty?": TEXT, "multiturn?": (bool, type(None))}
# A config's name inside a file name: "qualitative.parquet", "speed-bench_throughput_2k.jsonl".
CONFIG_IN_NAME = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, SPEED_CONFIGS))
                            + r")(?![a-z0-9])")


def named_config(bench: str | None) -> str | None:
    """'speed_bench:CONFIG' → CONFIG, checked; None for any other --bench value."""
    if bench != "speed_bench" and not (bench or "").startswith("speed_bench:"):
        return None
    config = bench.partition(":")[2]
    if config not in SPEED_CONFIGS:
        raise TaskError(f"--bench {bench}: name a SPEED-Bench config: "
                        f"{', '.join('speed_bench:' + c for c in SPEED_CONFIGS)}")
    return config


def config_file(config: str) -> Path:
    """A config's file in $SPECBENCH_HOME/speed_bench, parquet or JSONL. Never downloaded:
    about half its rows are placeholders until NVIDIA's script rebuilds them."""
    folder = specbench_home() / "speed_bench"
    for path in (folder / f"{config}.parquet", folder / f"{config}.jsonl"):
        if path.is_file():
            return path
    raise TaskError(f"--bench speed_bench:{config}: no {folder / config}.parquet (or .jsonl); "
                    "SPEED-Bench is not downloaded automatically: save that config of "
                    "huggingface.co/datasets/nvidia/SPEED-Bench there, or pass its path to --bench")


def is_speed_bench(path: Path) -> bool:
    """Parquet files, files named after a config, and JSONL whose first row has SPEED-Bench's
    own fields beside its turns (a Spec-Bench row has neither sub_category nor source)."""
    if path.suffix == ".parquet" or CONFIG_IN_NAME.search(path.name.lower()):
        return True
    first = next(json_lines(path, TaskError), (0, None))[1]
    return isinstance(first, dict) and "turns" in first \
        and ("sub_category" in first or "source" in first)


def read_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) for every row: 'FILE: row N' of a parquet file, 'FILE:LINE' of JSONL."""
    if path.suffix != ".parquet":
        yield from ((f"{path}:{n}", row) for n, row in json_lines(path, TaskError))
        return
    for n, row in enumerate(parquet_rows(path), 1):
        yield f"{path}: row {n}", row


def parquet_rows(path: Path) -> Iterator[dict]:
    """A parquet file's rows as plain Python values (turns a list, never a numpy array), read a
    batch at a time: the 32k config's file is ~100 MB of text."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: reading parquet needs pyarrow: pip install 'pyarrow>=14' (the "
                        "'speed' extra of specbench-suite), or give the rows as JSONL") from None
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise TaskError(f"{path}: not a readable parquet file "
                        f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                        ) from None


def file_config(path: Path, first: tuple[str, object] | None = None) -> tuple[str, list[str]]:
    """(the config a file holds, its categories): named in the file's name, else the config of
    its first row's category (`first`: that row, when read already). The throughput configs
    share their categories, so such a file is 'throughput_*'."""
    match = CONFIG_IN_NAME.search(path.name.lower())
    if match:
        return match.group(1), SPEED_CONFIGS[match.group(1)]
    where, row = first or next(read_rows(path), (None, None))
    if where is None:
        raise TaskError(f"{path}: no questions")
    category = checked(row, {"category": str}, where, TaskError)["category"]
    configs = [c for c, cats in SPEED_CONFIGS.items() if category in cats]
    if not configs:
        known = dict.fromkeys(c for cats in SPEED_CONFIGS.values() for c in cats)
        raise TaskError(f"{where}: unknown category {category!r}; SPEED-Bench's: "
                        f"{', '.join(known)}")
    label = configs[0] if len(configs) == 1 else commonprefix(configs) + "*"
    return label, SPEED_CONFIGS[configs[0]]


def parse_row(row: object, number: int, where: str, config: str, categories: list[str]
              ) -> Question:
    """One row checked (one line naming `where` if bad) as the question numbered `number`."""
    checked(row, ROW, where, TaskError)
    qid, category, turns = row["question_id"], row["category"], row["turns"]
    if category not in categories:
        raise TaskError(f"{where}: category {category!r} is not one of {config}'s: "
                        f"{', '.join(categories)}")
    if not turns or not all(isinstance(t, str) for t in turns):
        raise TaskError(f"{where}: question {qid!r} has no turns (need a list of strings)")
    return Question(number, category, tuple(turns), subtask=category, original_id=str(qid))


def is_placeholder(question: Question) -> bool:
    return any(turn.startswith(PLACEHOLDER) for turn in question.turns)


def load_speed_bench(path: Path) -> list[Question]:
    """A SPEED-Bench file's questions, every row checked; placeholder rows are left out and
    counted in one line on stderr (an error when nothing else is left)."""
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise TaskError(f"{path}: no questions")
    config, categories = file_config(path, first)
    questions, seen, placeholders = [], set(), 0
    for number, (where, row) in enumerate(itertools.chain([first], rows), 1):
        q = parse_row(row, number, where, config, categories)
        if q.original_id in seen:
            raise TaskError(f"{where}: duplicate question_id {q.original_id!r}")
        seen.add(q.original_id)
        if is_placeholder(q):
            placeholders += 1
        else:
            questions.append(q)
    if not questions:
        raise TaskError(f"{path}: all {placeholders} rows are placeholders (their text is to be "
                        f"fetched from other datasets); {REBUILD}")
    if placeholders:
        print(f"note: {path.name}: {placeholders} of {number} rows are placeholders (their text "
              f"is to be fetched from other datasets), left out; {REBUILD} to run them",
              file=sys.stderr, flush=True)
    return questions
