"""REST's datastore: one 32-bit token array of a corpus and the suffix array of its reverse.

The suffix array is built over the *reversed* tokens so that a query read backwards from the
newest token (root, previous token, ...) narrows its range one token at a time: the longest
matching context is found in one pass instead of one binary search per length. Files:
  tokens.u32   uint32, little-endian, turns separated by SEPARATOR
  rsa.i32|i64  suffix array of the reversed token array (int32 below 2^31 tokens)
  manifest.json  tokenizer name, vocab hash, token count, file sizes, build options
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .jsonl import json_lines

SEPARATOR = np.uint32(0xFFFFFFFF)   # between turns; never a real token, never matched
TOKENS, MANIFEST = "tokens.u32", "manifest.json"
FORMAT_VERSION = 1


class DatastoreError(ValueError):
    pass


def vocab_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def iter_texts(path: Path) -> Iterator[str]:
    """Every turn's text of a corpus file, streamed line by line for JSONL. Understands ShareGPT
    ({"conversations": [{"value": ...}]}), UltraChat ({"data": [str, ...]} or {"messages":
    [{"content": ...}]}), the built-in split ({"turns", "answers"}) and plain {"text": ...}."""
    path = Path(path)
    if not path.is_file():
        raise DatastoreError(f"corpus file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
    if first == "[":            # one JSON array (ShareGPT dumps): not streamable, loaded whole
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatastoreError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") \
                from None
    else:
        records = (record for _, record in json_lines(path, DatastoreError))
    for record in records:
        yield from record_texts(record)


def record_texts(record) -> Iterator[str]:
    if isinstance(record, str):
        yield record
        return
    if not isinstance(record, dict):
        return
    if "text" in record:
        yield record["text"]
    for key in ("turns", "answers", "data"):
        for text in record.get(key) or []:
            if isinstance(text, str):
                yield text
    for message in record.get("conversations") or record.get("messages") or []:
        text = message.get("value", message.get("content")) if isinstance(message, dict) else None
        if isinstance(text, str):
            yield text


def build_datastore(tokenizer, files: list[Path], out: Path, tokenizer_name: str = "",
                    progress=None) -> dict:
    """Tokenize every turn to disk (streaming), then sort the suffixes. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    count = 0
    task = progress.add_task("tokenizing", total=None, info="") if progress else None
    with open(out / TOKENS, "wb") as sink:
        for file in files:
            for text in iter_texts(Path(file)):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if ids:
                    np.asarray(ids + [SEPARATOR], dtype=np.uint32).tofile(sink)
                    count += len(ids) + 1
                    if progress and count % 1000 < len(ids) + 1:
                        progress.update(task, info=f"{count:,} tokens")
    if count == 0:
        (out / TOKENS).unlink()
        raise DatastoreError(f"empty corpus: no text in {', '.join(map(str, files))}")
    if progress:
        progress.update(task, total=1, completed=1, info=f"{count:,} tokens")
    return index_tokens(out, {"tokenizer": tokenizer_name, "vocab_hash": vocab_hash(tokenizer),
                              "sources": [str(f) for f in files]}, started, progress)


def index_tokens(out: Path, info: dict, started: float, progress=None) -> dict:
    """Build the reversed suffix array of out/tokens.u32 and write the manifest last."""
    import pydivsufsort
    task = progress.add_task("suffix array", total=1, info="") if progress else None
    tokens = np.memmap(out / TOKENS, dtype=np.uint32, mode="r")
    suffixes = pydivsufsort.divsufsort(np.ascontiguousarray(tokens[::-1]))
    sa_name = f"rsa.{'i32' if suffixes.dtype == np.int32 else 'i64'}"
    suffixes.tofile(out / sa_name)
    if progress:
        progress.update(task, completed=1)
    seconds = time.perf_counter() - started
    manifest = {"format": FORMAT_VERSION, **info, "tokens": int(tokens.size),
                "suffix_array": sa_name, "suffix_dtype": str(suffixes.dtype),
                "bytes": (out / TOKENS).stat().st_size + (out / sa_name).stat().st_size,
                "build_seconds": seconds, "tokens_per_second": tokens.size / seconds}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


class Datastore:
    """Memory-mapped datastore with longest-context retrieval."""

    def __init__(self, folder: Path, tokenizer=None):
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise DatastoreError(f"datastore {folder}: no {MANIFEST} (build one with "
                                 "`specbench datastore build`)")
        self.manifest = m = json.loads((folder / MANIFEST).read_text())
        if tokenizer is not None and m["vocab_hash"] != vocab_hash(tokenizer):
            raise DatastoreError(f"datastore {folder} was built with another tokenizer "
                                 f"({m.get('tokenizer') or 'unknown'}; vocab hash "
                                 f"{m['vocab_hash']} ≠ {vocab_hash(tokenizer)})")
        n = m["tokens"]
        dtype = np.dtype(m["suffix_dtype"])
        for name, size in ((TOKENS, 4 * n), (m["suffix_array"], dtype.itemsize * n)):
            path = folder / name
            if not path.is_file():
                raise DatastoreError(f"datastore {folder}: {name} is missing")
            if path.stat().st_size != size:
                raise DatastoreError(f"datastore {folder}: {name} is truncated or damaged "
                                     f"({path.stat().st_size} bytes, expected {size})")
        self.tokens = np.memmap(folder / TOKENS, dtype=np.uint32, mode="r")
        self.suffixes = np.memmap(folder / m["suffix_array"], dtype=dtype, mode="r")
        self.n = n
        self.bytes = m["bytes"]

    def token_at_reversed(self, i: int) -> int:
        """Token i of the reversed array; -1 past its end (shorter suffixes sort first)."""
        return int(self.tokens[self.n - 1 - i]) if i < self.n else -1

    def narrow(self, lo: int, hi: int, depth: int, token: int) -> tuple[int, int]:
        """Within suffix-array range [lo, hi) whose suffixes share `depth` leading tokens, the
        sub-range whose next token equals `token` (binary search; vectorised when small)."""
        if hi - lo <= 2048:
            pos = self.suffixes[lo:hi].astype(np.int64) + depth
            keys = np.where(pos < self.n, self.tokens[self.n - 1 - np.minimum(pos, self.n - 1)]
                            .astype(np.int64), -1)
            return (lo + int(np.searchsorted(keys, token, "left")),
                    lo + int(np.searchsorted(keys, token, "right")))

        def bound(strict: bool) -> int:
            a, b = lo, hi
            while a < b:
                mid = (a + b) // 2
                t = self.token_at_reversed(int(self.suffixes[mid]) + depth)
                if t < token or (strict and t == token):
                    a = mid + 1
                else:
                    b = mid
            return a
        return bound(False), bound(True)

    def longest_match(self, context: list[int], max_span: int, min_span: int = 2):
        """The longest suffix of `context` (at most max_span, at least min_span tokens) found in
        the corpus: (length, lo, hi) of its suffix-array range, or None."""
        lo, hi, best = 0, self.n, None
        for depth, token in enumerate(reversed(context[-max_span:])):
            lo, hi = self.narrow(lo, hi, depth, token)
            if lo >= hi:
                break
            if depth + 1 >= min_span:
                best = (depth + 1, lo, hi)
        return best

    def continuations(self, lo: int, hi: int, max_hits: int, length: int) -> np.ndarray:
        """Up to max_hits rows of the `length` tokens following each occurrence (SEPARATOR-padded
        at the corpus end)."""
        starts = self.n - self.suffixes[lo:min(hi, lo + max_hits)].astype(np.int64)
        idx = starts[:, None] + np.arange(length)[None, :]
        out = np.full(idx.shape, SEPARATOR, dtype=np.uint32)
        inside = idx < self.n
        out[inside] = self.tokens[idx[inside]]
        return out
