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
    low: float | None = None        # the smallest value allowed (numbers), checked before a run
    high: float | None = None       # the largest

    def bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in [{self.low}, {self.high}]"
        return f"at least {self.low}" if self.low is not None else f"at most {self.high}"
