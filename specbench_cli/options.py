"""A declared option (of a method or a trainer), importable without torch: the CLI builds its
commands and `specbench list` from these declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option of a method (`specbench list` shows it; `--opt method.key=value`, `--sweep`
    and run configs set it) or of a trainer (a `specbench train` flag). `type` (int, float, str, bool) parses command-line text; a default
    of None means "chosen by the method" (e.g. from its add-on)."""
    default: Any
    type: type
    help: str
