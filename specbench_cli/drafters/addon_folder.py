"""An add-on folder (adapter, heads, draft model) as a trainer leaves it and a loader reads it.

`specbench train` marks its output folder unfinished before it writes anything there and
removes the mark only after the weights and config.json are whole (train.loop). Every loader
calls `check_finished` first, so a folder whose trainer was killed, or is still running, is one
line telling how to resume, never a half-read model. Folders other tools wrote (official
checkpoints, conversions) have no mark and are read as they are.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..files import atomic_write, checked, read_json

UNFINISHED = "training.json"


def resume_command() -> str:
    """How to finish an interrupted run: this process's own command line when it is
    `specbench train ...` (the same command resumes), else a description of it."""
    args = sys.argv[1:]
    if args[:1] == ["train"]:
        return f"`specbench {shlex.join(args)}`"
    return "the same `specbench train` command"


def mark_unfinished(out: Path) -> None:
    atomic_write(Path(out) / UNFINISHED, json.dumps({"resume": resume_command()}))


def mark_finished(out: Path) -> None:
    (Path(out) / UNFINISHED).unlink(missing_ok=True)


def check_finished(folder: Path, what: str, error: type[Exception]) -> None:
    """`error` when `folder` holds the unfinished mark of a `specbench train` run."""
    marker = Path(folder) / UNFINISHED
    if not marker.is_file():
        return
    try:
        command = checked(read_json(marker), {"resume": str}, str(marker))["resume"]
    except ValueError:      # the mark alone is enough to refuse; its text is only a hint
        command = resume_command()
    raise error(f"{what} {folder} is incomplete: its training was stopped before it finished; "
                f"run {command} again to resume it")


def read_config(folder: Path, what: str, error: type[Exception], fields: dict) -> dict:
    """folder/config.json of a finished add-on, checked against `fields` (files.checked), or
    `error` naming the folder or the file."""
    check_finished(folder, what, error)
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise error(f"{what} {folder}: no config.json")
    return checked(read_json(path, error), fields, str(path), error)
