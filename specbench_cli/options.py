"""A declared option (of a method or a trainer), importable without torch: the CLI builds its
commands and `specbench list` from these declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SpecbenchError


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


TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def option_value(option: Option, value, where: str):
    """A value for a declared option: command-line text parsed by the option's type, a value
    from a YAML/JSON config or the Python API checked against it. 'none' restores a None
    default (the method's own choice)."""
    if isinstance(value, str) and value.strip().lower() == "none" and option.default is None:
        return None
    kind = option.type.__name__
    if isinstance(value, str) and option.type is not str:
        text = value.strip().lower()
        if option.type is bool:
            if text not in TRUE + FALSE:
                raise SpecbenchError(f"{where}: expected true or false, got {value!r}")
            return text in TRUE
        try:
            parsed = option.type(value)
        except ValueError:
            raise SpecbenchError(f"{where}: expected {kind}, got {value!r}") from None
        return in_range(option, parsed, where)
    if value is None and option.default is None:
        return None
    if option.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if option.type in (int, float, bool) and (type(value) is not option.type):
        raise SpecbenchError(f"{where}: expected {kind}, got {value!r}")
    return in_range(option, value, where)   # str options may also take objects (a loaded adapter)


def in_range(option: Option, value, where: str):
    """The value, if inside the option's declared bounds; else a one-line error."""
    if value is not None and ((option.low is not None and value < option.low) or
                              (option.high is not None and value > option.high)):
        raise SpecbenchError(f"{where}: must be {option.bounds()} (got {value!r})")
    return value
