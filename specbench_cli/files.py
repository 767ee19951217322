"""Where specbench keeps its files and how it reads them: $SPECBENCH_HOME, checksums, JSON Lines
with errors that name the file and line. Imports nothing of the project: every layer uses it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator


def specbench_home() -> Path:
    """Where downloads and the built-in benchmark live: $SPECBENCH_HOME or the user cache dir."""
    if os.environ.get("SPECBENCH_HOME"):
        return Path(os.environ["SPECBENCH_HOME"]).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("specbench"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_lines(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """(line number, value) for every non-blank line, streamed; a bad line raises `error` with
    'FILE:LINE: malformed JSON (...)' or 'FILE:LINE: not UTF-8 text (...)'."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = decoded(raw, f"{path}:{lineno}", error)
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as err:
                    raise error(f"{path}:{lineno}: malformed JSON ({err.msg})") from None


def decoded(raw: bytes, where: str, error: type[Exception] = ValueError) -> str:
    """UTF-8 text, or `error` naming where and the first bad byte (a Latin-1 or binary file)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                    f"{err.start + 1}); save the file as UTF-8") from None


def read_text(path: Path, error: type[Exception] = ValueError) -> str:
    """A whole UTF-8 text file, or `error` naming the file and what is wrong."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from None
    return decoded(raw, str(path), error)
