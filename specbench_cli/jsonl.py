"""Reading JSON Lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def json_lines(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """(line number, value) for every non-blank line, streamed; a bad line raises `error` with
    'FILE:LINE: malformed JSON (...)'."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    raise error(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
