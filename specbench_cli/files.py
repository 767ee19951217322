"""Where specbench keeps its files and how it reads and writes them: $SPECBENCH_HOME, checksums,
JSON Lines with errors that name the file and line, records checked against a table of field
types, and writes that a kill or a full disk can never leave half done. Imports nothing of the
project but its errors: every layer uses it."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import platformdirs

from .errors import SpecbenchError


def specbench_home() -> Path:
    """Where downloads, caches and the built-in benchmark live: $SPECBENCH_HOME or the user cache
    dir; a folder this process can write, or a one-line error naming it."""
    if os.environ.get("SPECBENCH_HOME"):
        home, name = Path(os.environ["SPECBENCH_HOME"]).expanduser(), "SPECBENCH_HOME"
    else:
        home, name = Path(platformdirs.user_cache_dir("specbench")), "specbench's cache folder"
    if home.exists() and not home.is_dir():
        raise SpecbenchError(f"{name} {home} cannot be used: it is a file, not a folder; point "
                             "SPECBENCH_HOME at a folder you can write")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecbenchError(f"{name} {home} cannot be used: {err.strerror or err}; point "
                             "SPECBENCH_HOME at a folder you can write") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise SpecbenchError(f"{name} {home} cannot be used: not writable; point SPECBENCH_HOME "
                             "at a folder you can write")
    return home


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a whole file under a temporary name, then rename it: a reader (or a later run after
    a kill) sees the old file or the new one, never a part. A full disk is a one-line error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SpecbenchError(f"{path}: cannot be written ({err.strerror or err})") from None


def checked(record: object, fields: dict, where: str, error: type[Exception] = SpecbenchError):
    """`record` if it is a dict holding every field of `fields` ({name: type or tuple of types})
    with a value of that type; else `error` naming `where` and the first field that is wrong.
    A name ending in "?" is optional. bool never passes for int (JSON's true is not a count)."""
    if not isinstance(record, dict):
        raise error(f"{where}: expected an object with {', '.join(fields)}, got "
                    f"{type(record).__name__}")
    for name, kind in fields.items():
        optional = name.endswith("?")
        name = name.rstrip("?")
        if name not in record:
            if optional:
                continue
            raise error(f"{where}: missing field {name!r}")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = record[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise error(f"{where}: field {name!r} must be {want}, got "
                        f"{JSON_NAMES.get(type(value), type(value).__name__)}")
    return record


JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
              float: "a number", bool: "true/false", type(None): "null"}


def read_json(path: Path, error: type[Exception] = SpecbenchError) -> object:
    """A whole JSON file, or `error` naming the file and what is wrong with it."""
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from None


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


@contextmanager
def folder_lock(folder: Path, what: str = "run"):
    """Hold an exclusive lock on `folder` while this process writes there: flock on
    `folder/.lock`, which the OS frees when the process ends, even by SIGKILL, so a crash never
    leaves a stale lock. A second process is refused with one line naming the holder's pid."""
    try:
        import fcntl     # POSIX only
    except ImportError:          # Windows: no flock; runs there are not guarded
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpecbenchError(f"{folder} is in use by another {what} (pid {holder}); wait for it "
                             "to end, or write elsewhere (--out)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)             # frees the lock
