"""REST's datastore: one 32-bit token array of a corpus and the suffix array of its reverse.

The suffix array is built over the *reversed* tokens so that a query read backwards from the
newest token (root, previous token, ...) narrows its range one token at a time: the longest
matching context is found in one pass instead of one binary search per length. The widest
searches are skipped: a one-token range comes from the token counts, narrowings of wide ranges
(frequent contexts) are memoised, and once a range is small the rest of the query is compared
with all of it at once. Files:
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

from ..errors import SpecbenchError
from ..files import atomic_write, checked, json_lines, read_json, read_text

SEPARATOR = np.uint32(0xFFFFFFFF)   # between turns; never a real token, never matched
TOKENS, MANIFEST = "tokens.u32", "manifest.json"
FORMAT_VERSION = 1


class DatastoreError(SpecbenchError):
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
    with path.open("rb") as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
    if first == b"[":            # one JSON array (ShareGPT dumps): not streamable, loaded whole
        try:
            records = json.loads(read_text(path, DatastoreError))
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


TOKENIZE_BATCH = 1000      # turns per tokenizer call


def batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_datastore(tokenizer, files: list[Path], out: Path, tokenizer_name: str = "",
                    progress=None) -> dict:
    """Tokenize every turn to disk (streaming), then sort the suffixes. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    count = 0
    task = progress.add_task("tokenizing", total=None, info="") if progress else None
    with open(out / TOKENS, "wb") as sink:
        for file in files:
            for batch in batched(iter_texts(Path(file)), TOKENIZE_BATCH):
                # One call per batch: a fast tokenizer encodes a batch on all cores, and the
                # per-call overhead, not the encoding, dominates turn-at-a-time tokenizing.
                flat = []
                for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                    if ids:
                        flat.extend(ids)
                        flat.append(SEPARATOR)
                np.asarray(flat, dtype=np.uint32).tofile(sink)
                count += len(flat)
                if progress:
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
    import pydivsufsort     # a compiled extension, loaded only when a datastore is built
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
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


MAX_TOKEN_ID = 1 << 24      # far above any tokenizer's vocabulary


def token_bounds(tokens: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """Where each token id's suffixes start in the suffix array of the reversed tokens: the first
    reversed token orders them, so the ranges are the cumulative token counts (separators sort
    last and are left out). Counted in chunks: one pass over the map, little memory."""
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, tokens.size, chunk):
        part = tokens[start:start + chunk]
        part = part[part != SEPARATOR]
        if part.size and int(part.max()) >= MAX_TOKEN_ID:
            raise DatastoreError(f"token id {int(part.max()):,} is beyond any vocabulary: "
                                 f"{TOKENS} is damaged (rebuild the datastore)")
        part = np.bincount(part.astype(np.int64))
        if part.size > counts.size:
            part[:counts.size] += counts
            counts = part
        else:
            counts[:part.size] += part
    return np.concatenate([[0], np.cumsum(counts)])


# What a loader reads of the manifest (written last, so a datastore without one is unfinished).
MANIFEST_FIELDS = {"vocab_hash": str, "tokens": int, "suffix_array": str, "suffix_dtype": str,
                   "bytes": int, "tokenizer?": str}


class Datastore:
    """Memory-mapped datastore with longest-context retrieval."""

    def __init__(self, folder: Path, tokenizer=None):
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise DatastoreError(f"datastore {folder}: no {MANIFEST} (build one with "
                                 "`specbench datastore build`)")
        self.manifest = m = checked(read_json(folder / MANIFEST, DatastoreError),
                                    MANIFEST_FIELDS, str(folder / MANIFEST), DatastoreError)
        if m["suffix_dtype"] not in ("int32", "int64"):
            raise DatastoreError(f"{folder / MANIFEST}: suffix_dtype {m['suffix_dtype']!r} is "
                                 "not int32 or int64")
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
        # Plain ndarray views of the maps: indexing a np.memmap costs more than the lookup.
        self.tokens = np.memmap(folder / TOKENS, dtype=np.uint32, mode="r").view(np.ndarray)
        self.suffixes = np.memmap(folder / m["suffix_array"], dtype=dtype, mode="r") \
            .view(np.ndarray)
        self.n = n
        self.bytes = m["bytes"]
        self._memo: dict[tuple[int, ...], tuple[int, int]] = {}
        self.first_bounds = token_bounds(self.tokens)

    # Search costs are dominated by per-call overhead and by cache misses into the maps, not by
    # comparisons. A range wider than SCAN is narrowed by sampling FANOUT evenly spaced suffixes
    # a round (no Python loop reads the maps element by element); a range of at most SCAN
    # suffixes is read whole, every remaining query token at once.
    SCAN, FANOUT = 256, 64
    MEMO_SIZE = 1 << 16

    def keys(self, idx: np.ndarray, depth) -> np.ndarray:
        """Token `depth` (an int or an array broadcast against idx) of the reversed suffixes at
        suffix-array indices `idx`; -1 past the end (a shorter suffix sorts first)."""
        pos = self.suffixes[idx].astype(np.int64) + depth
        inside = pos < self.n
        return np.where(inside, self.tokens[self.n - 1 - np.where(inside, pos, 0)]
                        .astype(np.int64), -1)

    def first_at_least(self, lo: int, hi: int, depth: int, value: int) -> int:
        """The first index in [lo, hi) whose key at `depth` is ≥ value (hi if none); keys are
        sorted within a range whose suffixes share `depth` leading tokens."""
        while hi - lo > self.SCAN:
            idx = np.linspace(lo, hi - 1, self.FANOUT).astype(np.int64)
            a = int(np.searchsorted(self.keys(idx, depth), value, "left"))
            if a == 0:
                return lo
            # key(idx[a-1]) < value ≤ key(idx[a]): the answer lies in (idx[a-1], idx[a]].
            lo, hi = int(idx[a - 1]) + 1, (int(idx[a]) + 1 if a < len(idx) else hi)
        return lo + int(np.searchsorted(self.keys(np.arange(lo, hi), depth), value, "left"))

    def narrow(self, lo: int, hi: int, depth: int, token: int) -> tuple[int, int]:
        """Within suffix-array range [lo, hi) whose suffixes share `depth` leading tokens, the
        sub-range whose next token equals `token`."""
        if hi - lo <= self.SCAN:            # small: both ends from one read
            keys = self.keys(np.arange(lo, hi), depth)
            return (lo + int(np.searchsorted(keys, token, "left")),
                    lo + int(np.searchsorted(keys, token, "right")))
        start = self.first_at_least(lo, hi, depth, token)
        return start, self.first_at_least(start, hi, depth, token + 1)

    def extend(self, lo: int, hi: int, depth: int, query: list[int]) -> tuple[int, int, int]:
        """Match the rest of `query` (from `depth` on) against every suffix of the small range
        [lo, hi) in one read: (matched depth, lo, hi) of the longest common run. The suffixes
        that share it are adjacent because the range is sorted."""
        rest = np.asarray(query[depth:], dtype=np.int64)
        keys = self.keys(np.arange(lo, hi)[:, None], depth + np.arange(rest.size)[None, :])
        same = keys == rest
        run = np.where(same.all(1), rest.size, same.argmin(1))
        longest = int(run.max())
        if longest == 0:
            return depth, lo, hi
        rows = np.flatnonzero(run == longest)
        return depth + longest, lo + int(rows[0]), lo + int(rows[-1]) + 1

    def narrow_memoised(self, query: tuple[int, ...], lo: int, hi: int) -> tuple[int, int]:
        """`narrow` of a wide range, memoised by the query so far (newest token first). Only
        ranges wider than SCAN are searched this way, and those at one depth are disjoint, so
        there are at most tokens / SCAN of them a depth: decoding meets the same frequent
        contexts again and again. The memo is emptied when full: memory stays bounded."""
        found = self._memo.get(query)
        if found is None:
            found = self.narrow(lo, hi, len(query) - 1, query[-1])
            if len(self._memo) >= self.MEMO_SIZE:
                self._memo.clear()
            self._memo[query] = found
        return found

    def longest_match(self, context: list[int], max_span: int, min_span: int = 2):
        """The longest suffix of `context` (at most max_span, at least min_span tokens) found in
        the corpus: (length, lo, hi) of its suffix-array range, or None."""
        query = context[-max_span:][::-1]        # newest token first
        if not query or not 0 <= query[0] < len(self.first_bounds) - 1:
            return None
        # One token: its range comes from the token counts, no search.
        lo, hi = int(self.first_bounds[query[0]]), int(self.first_bounds[query[0] + 1])
        depth, best = 1, ((1, lo, hi) if min_span <= 1 and lo < hi else None)
        while depth < len(query) and lo < hi:
            if hi - lo <= self.SCAN:              # small: the rest of the query in one read
                depth, lo, hi = self.extend(lo, hi, depth, query)
                return (depth, lo, hi) if depth >= min_span else best
            lo, hi = self.narrow_memoised(tuple(query[:depth + 1]), lo, hi)
            if lo >= hi:
                break
            depth += 1
            if depth >= min_span:
                best = (depth, lo, hi)
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
