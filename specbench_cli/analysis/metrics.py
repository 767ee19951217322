"""Numbers from answer files, by Spec-Bench's definitions (Xia et al., 2024, "Unlocking
Efficiency in Large Language Model Inference"; github.com/hemingkx/Spec-Bench, evaluation/).

- throughput of a question: sum(new_tokens) / sum(wall_time) over its turns (tokens/s);
- speedup of a subset: mean over its questions of the method's throughput divided by the mean of
  vanilla's throughput over the same questions and repeat; with repeats, the mean over repeats;
- mean accepted tokens: all accept lengths of the subset pooled (step-weighted), bonus included;
- CTAR(w): share of steps whose accept length exceeds w;
- equal to vanilla: share of answers whose token ids equal vanilla's (same question and repeat);
  the others split into near-ties (at the first differing token vanilla's top-1 and top-2 logits
  were closer than a tolerance: a rounding flip, expected in fp16/bf16) and mismatches.
New tokens are counted from ids for every method alike, through EOS when one was generated
(counting "ids"); counting "spec_bench" counts the baseline's as Spec-Bench's own script does.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable

import numpy as np

from ..bench.records import CATEGORY_TO_SUBTASK, in_column_order
from ..errors import SpecbenchError
from ..files import checked, json_lines
from ..names import batch_size_of, batched

DEFINITIONS = [
    "speedup: mean over questions of the method's tokens/s divided by vanilla's mean over the "
    "same questions (Spec-Bench); mean over repeats. tokens/s of a question = its new tokens / "
    "its wall time (prefill included, device synchronized)",
    "MAT: mean accepted tokens per target forward, pooled over all steps (step-weighted, bonus "
    "token included; vanilla = 1.00)",
    "tok/s: mean over questions of per-question throughput",
    "equal: share of answers whose token ids equal vanilla's; the first differing question named. "
    "near-tie: differs first where vanilla's top-1 − top-2 logit gap was below the dtype's "
    "tolerance (fp32 1e-4, fp16 0.0625, bf16 0.5): rounding in another kernel shape, not a bug; "
    "mismatch: every other difference",
    "CTAR(w): share of target forwards that committed more than w tokens; draft len: drafted "
    "tokens per drafting round",
    "± std: sample standard deviation of the overall speedup across repeats; paired [95% CI]: "
    "geometric mean over questions of method/vanilla tokens/s on the same question and repeat "
    "(a question's repeats averaged first), with a seeded percentile bootstrap interval "
    "(2000 resamples of the questions)",
]

# Said under the table of a run with --batch-size above 1.
BATCHED = ("batched rows (name+bB, run with --batch-size B): speedup divides by vanilla at the "
           "same batch size; tok/s is per sequence (its tokens over its own wall time inside the "
           "batch); agg tok/s: every sequence's tokens over the batches' wall times; equal "
           "compares with vanilla's answer at batch 1")
CONTINUOUS = ("continuous batching (--continuous): a question that finished handed its place "
              "to the next at once; agg tok/s is every sequence's tokens over the pass's wall "
              "time")

# Said under the table of a run of endpoints (`run --endpoint`).
ENDPOINTS = ("endpoint rows (run --endpoint): each a deployed server's OpenAI API, streamed and "
             "greedy, timed on this client; new tokens by the server's usage count; MAT: new "
             "tokens over the target forwards the engine's own counters imply (tokens − accepted "
             "drafts); equal compares the answers' texts with the baseline endpoint's, a "
             "difference a near-tie where the baseline's top-1 − top-2 log-probability gap "
             "there (its untimed second answer, with logprobs) was below bf16's tolerance (0.5); "
             "gap p50/p90/p99: time between streamed chunks, pooled over all answers, in ms; "
             "rows 'name+bB' had B requests in flight (--concurrency B)")


def endpoint_latency(rows: list[dict]) -> dict | None:
    """An endpoint row's gaps between streamed chunks, pooled over its answers: percentiles in
    ms; None for rows of our engine."""
    if not any("endpoint" in r for r in rows):
        return None
    turns = [s for r in rows for s in r.get("stats") or []]
    gaps = sorted(g for s in turns for g in s.get("gaps_ms", []))
    at = (lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else None)
    positions = [s["per_position"] for s in turns if s.get("per_position")]
    accepted = [sum(p[i] for p in positions if i < len(p))
                for i in range(max(map(len, positions), default=0))]
    drafts = sum(s.get("drafts", 0) for s in turns if s.get("per_position"))
    sources = sorted({s["counter_source"] for s in turns if s.get("counter_source")})
    return {"p50": statistics.median(gaps) if gaps else None, "p90": at(0.9), "p99": at(0.99),
            "gaps": len(gaps), "counter_sources": sources,
            "accepted_per_position": [a / drafts for a in accepted] if drafts else None}


# How the baseline's tokens are counted in speedups (report and compare --counting).
COUNTING = {
    "ids": "new tokens are counted from ids, through EOS, for every method alike",
    "spec_bench": "speedups count tokens as Spec-Bench's evaluation/speed.py: the method's from "
                  "ids (new_tokens), the baseline's by re-tokenizing each answer turn's text less "
                  "one a turn; and every answer of each in a subtask is averaged, answered by "
                  "both or not (the baseline's own row: its ids over that count)",
}


class MetricsError(SpecbenchError):
    pass


# An answer line: Spec-Bench's fields (evaluation/speed.py reads these), then ours, optional so
# that Spec-Bench's own answer files load too ("?": optional; see files.checked).
ANSWER_LINE = {"question_id": int, "category": str, "choices": list, "model_id?": str,
               "method?": str, "subtask?": str, "repeat?": int, "token_ids?": list,
               "turn_accept_lengths?": list, "stats?": list, "batch?": dict, "worker?": str,
               "endpoint?": str, "original_id?": str}
ANSWER_CHOICE = {"new_tokens": list, "wall_time": list, "turns?": list, "decoding_steps?": list,
                 "accept_lengths?": list}


def checked_answer(row: object, where: str) -> dict:
    """An answer line with every field the numbers read, of the right type; else a one-line
    MetricsError naming `where` (FILE:LINE) and the field."""
    checked(row, ANSWER_LINE, where, MetricsError)
    if not row["choices"]:
        raise MetricsError(f"{where}: field 'choices' is empty")
    choice = checked(row["choices"][0], ANSWER_CHOICE, f"{where}: choices[0]", MetricsError)
    numbers = choice["new_tokens"] + choice["wall_time"]
    if len(choice["new_tokens"]) != len(choice["wall_time"]) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in numbers):
        raise MetricsError(f"{where}: choices[0].new_tokens and wall_time must be lists of "
                           "non-negative numbers, one per turn")
    return row


def load_answers(path: Path) -> list[dict]:
    return [checked_answer(row, f"{path}:{lineno}")
            for lineno, row in json_lines(path, MetricsError)]


def throughput(row: dict, count: Callable[[dict], int] | None = None) -> float:
    """An answer's tokens/s: its new tokens (or `count(row)`) over its wall time."""
    choice = row["choices"][0]
    tokens = count(row) if count else sum(choice["new_tokens"])
    return tokens / max(sum(choice["wall_time"]), 1e-12)


def aggregate_throughput(rows: list[dict]) -> float | None:
    """Tokens per second of all sequences together: every answer's new tokens over the wall
    time of the batches they were decoded in (each batch counted once); at batch size 1, the
    answers' own wall times."""
    tokens = sum(sum(r["choices"][0]["new_tokens"]) for r in rows)
    walls = {}
    for r in rows:
        batch = r.get("batch")
        key = (r.get("repeat", 0), batch["first_question"]) if batch else \
            (r.get("repeat", 0), "q", r["question_id"])
        # An endpoint pass's lines each hold its wall time so far: the largest is the pass's.
        walls[key] = max(walls.get(key, 0.0), batch["wall_time"] if batch
                         else sum(r["choices"][0]["wall_time"]))
    return tokens / sum(walls.values()) if walls and sum(walls.values()) > 0 else None


def mean_accepted(rows: list[dict]) -> float:
    """Accept lengths pooled; an endpoint's rows (no accept lengths, the engine's counters
    instead) as their new tokens over the target forwards its counters imply."""
    lengths = [a for r in rows for a in r["choices"][0].get("accept_lengths") or []]
    if lengths:
        return sum(lengths) / len(lengths)
    turns = [(tokens, stats.get("forwards")) for r in rows
             for tokens, stats in zip(r["choices"][0]["new_tokens"], r.get("stats") or [])]
    forwards = sum(f for _, f in turns if f)
    return sum(t for t, f in turns if f) / forwards if forwards else float("nan")


def ctar(rows: list[dict], w: int) -> float:
    lengths = [a for r in rows for a in r["choices"][0]["accept_lengths"]]
    return sum(a > w for a in lengths) / len(lengths) if lengths else float("nan")


def paired(method_rows: list[dict], vanilla_rows: list[dict]):
    """(method row, vanilla row) pairs answering the same question in the same repeat."""
    by_key = {(r["question_id"], r.get("repeat", 0)): r for r in vanilla_rows}
    for row in method_rows:
        base = by_key.get((row["question_id"], row.get("repeat", 0)))
        if base is not None:
            yield row, base


def speedup_by_repeat(method_rows: list[dict], vanilla_rows: list[dict],
                      base_count: Callable[[dict], int] | None = None) -> dict[int, float]:
    """Spec-Bench speedup (ratio of mean throughputs) within each repeat. Counting ids (no
    `base_count`): over the questions both answered. Counting spec_bench (`base_count`: the
    baseline's tokens re-counted from its text): over every answer of each, as speed.py reads
    both files whole; its mean report averages runs the way we average repeats."""
    # A repeat in which either side has no answer in the subset is left out; speed.py would
    # divide by the mean of nothing (nan) there.
    if base_count is None:
        pairs = list(paired(method_rows, vanilla_rows))
        method_rows, vanilla_rows = [row for row, _ in pairs], [base for _, base in pairs]
    mine, theirs = rows_by_repeat(method_rows), rows_by_repeat(vanilla_rows)
    return {r: statistics.mean(map(throughput, mine[r]))
            / statistics.mean(throughput(b, base_count) for b in theirs[r])
            for r in sorted(mine) if r in theirs}


def rows_by_repeat(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(row.get("repeat", 0), []).append(row)
    return out


def speedup(method_rows: list[dict], vanilla_rows: list[dict],
            base_count: Callable[[dict], int] | None = None) -> float | None:
    """Spec-Bench speedup per repeat (see speedup_by_repeat), averaged over repeats."""
    ratios = list(speedup_by_repeat(method_rows, vanilla_rows, base_count).values())
    return statistics.mean(ratios) if ratios else None


def paired_ratios(method_rows: list[dict], vanilla_rows: list[dict],
                  base_count: Callable[[dict], int] | None = None) -> dict[int, float]:
    """Per question: method/vanilla throughput in the same repeat, geometric mean over repeats.
    One value a question, because repeats of one question are not independent samples."""
    logs: dict[int, list[float]] = {}
    for row, base in paired(method_rows, vanilla_rows):
        logs.setdefault(row["question_id"], []).append(
            math.log(throughput(row) / throughput(base, base_count)))
    return {q: math.exp(statistics.mean(v)) for q, v in sorted(logs.items())}


def bootstrap_ci(values: list[float], resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; seeded, so a report is reproducible."""
    if len(values) < 2:
        return None
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_speedup(method_rows: list[dict], vanilla_rows: list[dict], resamples: int = 2000,
                   seed: int = 0, base_count: Callable[[dict], int] | None = None) -> dict:
    """Geometric mean of the paired per-question speedups and its 95% bootstrap interval
    (questions resampled). Geometric, because ratios average that way: 2x on one question and
    0.5x on another is no speedup, and one question timed during a hiccup cannot dominate."""
    logs = [math.log(r) for r in paired_ratios(method_rows, vanilla_rows, base_count).values()]
    ci = bootstrap_ci(logs, resamples=resamples, seed=seed)
    return {"mean": math.exp(statistics.mean(logs)) if logs else None,
            "ci95": [math.exp(ci[0]), math.exp(ci[1])] if ci else None,
            "questions": len(logs), "resamples": resamples, "seed": seed}


def missing_answers(answers: dict[str, list[dict]]) -> dict[str, list[tuple[int, int]]]:
    """Per method, the (question_id, repeat) pairs another method answered and it did not."""
    keys = {name: {(r["question_id"], r.get("repeat", 0)) for r in rows}
            for name, rows in answers.items()}
    everything = set().union(*keys.values()) if keys else set()
    return {name: sorted(everything - mine) for name, mine in keys.items() if everything - mine}


# Vanilla's top-1 − top-2 logit gap below which a flipped token counts as a near-tie: the method
# computed the same logits in another kernel shape (a block, a tree), so they round differently.
# Two units in the last place of a logit between 32 and 64 in each dtype (bf16 keeps 8
# significant bits, fp16 11): on SmolLM2 in bf16, 10% of vanilla's own tokens have a gap
# under 0.25 and 21% under 0.5, and every flip seen was at a gap of 0 to 0.25.
# A server's (run --endpoint) dtype is its own and its log-probabilities' gaps are the logits':
# bf16's tolerance, the widest, since servers run half precision or quantized weights.
NEAR_TIE = {"fp32": 1e-4, "fp16": 0.0625, "bf16": 0.5, "server": 0.5}


def first_difference(mine: list[list[int]], theirs: list[list[int]]) -> tuple[int, int] | None:
    """(turn, position) of the first token where two answers differ; None when equal. Later
    turns are not compared past it: their prompts already differ."""
    for turn, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            return turn, common_prefix(a, b)
    return None if len(mine) == len(theirs) else (min(len(mine), len(theirs)), 0)


def common_prefix(a, b) -> int:
    """How many leading items (tokens, bytes) two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def answer_texts(row: dict) -> list[bytes]:
    return [str(t).encode() for t in row["choices"][0].get("turns") or []]


def first_text_difference(mine: list[bytes], theirs: list[bytes]) -> tuple[int, int] | None:
    """(turn, byte offset) where two answers' texts first differ (endpoint rows: a server's
    token ids are not in its OpenAI replies); None when equal."""
    return first_difference([list(t) for t in mine], [list(t) for t in theirs])


def token_at(base: dict, turn: int, offset: int) -> int | None:
    """The baseline's token holding byte `offset` of a turn (its untimed logprobs answer
    recorded each token's bytes); None when not recorded."""
    stats = base.get("stats") or []
    sizes = stats[turn].get("token_bytes") if turn < len(stats) else None
    if not sizes:
        return None
    end = 0
    for i, size in enumerate(sizes):
        end += size
        if offset < end:
            return i
    return None


def vanilla_gap(base: dict, turn: int, position: int) -> float | None:
    """Vanilla's recorded top-1 − top-2 logit gap at a token (None: not recorded)."""
    stats = base.get("stats") or []
    gaps = stats[turn].get("top2_gap") if turn < len(stats) else None
    return gaps[position] if gaps and position < len(gaps) else None


# A sampled run's answers differ from vanilla's by design: equality is not measured
# (`specbench check-sampling` tests the distribution instead).
SAMPLED = {"share": None, "near_tie": None, "mismatch": None, "compared": 0, "first_diff": None,
           "first_mismatch": None, "differences": [], "sampled": True}


def equality(method_rows: list[dict], vanilla_rows: list[dict], tolerance: float = 1e-4) -> dict:
    """Equal answers, near-ties and mismatches (shares of the answers compared), with each
    difference's place and vanilla's logit gap there."""
    compared, equal, near_tie, first_diff, first_mismatch, diffs = 0, 0, 0, None, None, []
    ordered = sorted(method_rows, key=lambda r: (r.get("repeat", 0), r["question_id"]))
    for row, base in paired(ordered, vanilla_rows):
        texts = "endpoint" in row and "endpoint" in base
        if not texts and ("token_ids" not in row or "token_ids" not in base):
            continue
        compared += 1
        where = first_text_difference(answer_texts(row), answer_texts(base)) if texts else \
            first_difference(row["token_ids"], base["token_ids"])
        if where is None:
            equal += 1
            continue
        if texts:
            where = (where[0], token_at(base, *where))
        gap = vanilla_gap(base, *where) if where[1] is not None else None
        tie = gap is not None and gap < tolerance
        near_tie += tie
        first_diff = first_diff if first_diff is not None else row["question_id"]
        if not tie and first_mismatch is None:
            first_mismatch = row["question_id"]
        diffs.append({"question_id": row["question_id"], "repeat": row.get("repeat", 0),
                      "turn": where[0], "position": where[1], "gap": gap, "near_tie": tie})
    share = (lambda n: n / compared if compared else None)
    return {"share": share(equal), "near_tie": share(near_tie),
            "mismatch": share(compared - equal - near_tie), "compared": compared,
            "first_diff": first_diff, "first_mismatch": first_mismatch, "tolerance": tolerance,
            "differences": diffs}


def method_stats(rows: list[dict], declared: list[dict] = ()) -> tuple[dict, list[dict]]:
    """Method counters summed over all turns, with the mean draft length (drafted tokens per
    drafting round, for every method that drafts in rounds); and the statistics the method
    declares (run.json methods.<name>.statistics), each scale × Σ count / Σ per."""
    totals: dict[str, float] = {}
    for row in rows:
        for turn in row.get("stats", []):
            for key, value in turn.items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0) + value
    if totals.get("rounds"):
        totals["mean_draft_length"] = totals.get("drafted", 0) / totals["rounds"]
    return totals, [declared_value(totals, d) for d in declared]


def declared_value(totals: dict, declaration: dict) -> dict:
    """One declared statistic's value; None when the answers lack its counters (older files)."""
    count, per = totals.get(declaration["count"]), totals.get(declaration["per"])
    value = None if count is None or not per else declaration.get("scale", 1) * count / per
    return {"label": declaration["label"], "value": value, "unit": declaration.get("unit", ""),
            "help": declaration.get("help", "")}


def statistic_definitions(declared: dict[str, list[dict]]) -> list[str]:
    """One line a distinct declared statistic: its label, help and formula."""
    lines = {}
    for declarations in declared.values():
        for d in declarations:
            unit = f", in {d['unit']}" if d.get("unit") else ""
            lines.setdefault(d["label"], f"{d['label']}: {d.get('help', '')} ({d.get('scale', 1):g}"
                             f" × Σ {d['count']} / Σ {d['per']} over all turns{unit})")
    return list(lines.values())


def check_declarations(declared: dict[str, list[dict]]) -> None:
    for name, declarations in declared.items():
        for d in declarations:
            if not isinstance(d, dict) or not {"label", "count", "per"} <= set(d):
                raise MetricsError(f"run.json methods.{name}.statistics: {d!r} needs a label, "
                                   "a count and a per (counter names)")


PHASES = ("prefill", "draft", "verify")


def block_histogram(rows: list[dict]) -> dict[str, int]:
    """How many verification forwards took each number of tokens (runs that recorded it)."""
    counts: dict[int, int] = {}
    for row in rows:
        for turn in row.get("stats", []):
            for size in turn.get("block_sizes", []):
                counts[size] = counts.get(size, 0) + 1
    return {str(k): counts[k] for k in sorted(counts)}


def mean_block(histogram: dict[str, int]) -> float | None:
    """Mean tokens a verification forward took (pending token + drafts or tree nodes)."""
    forwards = sum(histogram.values())
    return sum(int(k) * n for k, n in histogram.items()) / forwards if forwards else None


def phase_breakdown(stats: dict, wall: float, tokens: int, steps: int) -> dict | None:
    """Where a method's time went (runs made with --breakdown): seconds per phase summed over
    all turns, the rest (acceptance, cache moves, Python) being wall time minus the phases;
    also per committed token and per target forward (step), in ms."""
    if "verify_seconds" not in stats:
        return None
    seconds = {p: stats.get(f"{p}_seconds", 0.0) for p in PHASES}
    seconds["rest"] = wall - sum(seconds.values())
    return {"seconds": seconds, "wall_seconds": wall, "tokens": tokens, "steps": steps,
            "ms_per_token": {p: 1e3 * v / tokens for p, v in seconds.items()} if tokens else {},
            "ms_per_step": {p: 1e3 * v / steps for p, v in seconds.items()} if steps else {}}


def subtask_of(row: dict) -> str:
    """An answer line's subtask: ours name it (a SPEED-Bench category is its own); a Spec-Bench
    answer file's lines have their category, mapped as Spec-Bench maps it."""
    return row.get("subtask") or CATEGORY_TO_SUBTASK.get(row["category"], row["category"])


def summarize(answers: dict[str, list[dict]], baseline: str = "vanilla",
              near_tie: float = NEAR_TIE["fp32"],
              declared: dict[str, list[dict]] | None = None,
              base_count: Callable[[dict], int] | None = None, sampled: bool = False) -> dict:
    """Per method: per-subtask and overall speedup, MAT, tokens/s, CTAR, equality (`near_tie`:
    the logit-gap tolerance, by the run's dtype), and the statistics `declared` by method.
    `base_count`: the baseline's tokens in speedups by Spec-Bench's counting (None: ids).
    `sampled`: the run sampled (temperature > 0), so answers are not compared with vanilla's."""
    if baseline not in answers:
        raise MetricsError(f"no {baseline} answers: every speedup divides by {baseline}")
    declared = {name: (declared or {}).get(name, []) for name in answers}
    check_declarations(declared)
    # The subtasks the baseline answered, in their suite's column order (Spec-Bench's six or
    # a SPEED-Bench config's categories: answer lines name their subtask).
    present = in_column_order({subtask_of(r) for r in answers[baseline]})
    out = {}
    for name, rows in answers.items():
        stats, declared_values = method_stats(rows, declared[name])
        # Speedups divide by the baseline at the same batch size; answers must equal its own
        # (at batch 1) all the same.
        size = batch_size_of(name)
        if batched(baseline, size) not in answers:
            raise MetricsError(f"no {batched(baseline, size)} answers: {name}'s speedup divides "
                               f"by {baseline} at batch size {size}")
        base, reference = answers[batched(baseline, size)], answers[baseline]
        # Subsets as speed.py's task filter picks them: mt_bench's eight categories, the others
        # by their own category name (suites/spec_bench.yaml holds the same lists).
        by_sub = {s: [r for r in rows if subtask_of(r) == s] for s in present}
        base_sub = {s: [r for r in base if subtask_of(r) == s] for s in present}
        by_repeat = list(speedup_by_repeat(rows, base, base_count).values())
        out[name] = {
            "questions": len({r["question_id"] for r in rows}),
            "repeats": len({r.get("repeat", 0) for r in rows}),
            "speedup": {s: speedup(by_sub[s], base_sub[s], base_count) for s in present},
            "speedup_overall": speedup(rows, base, base_count),
            "speedup_by_repeat": by_repeat,
            "speedup_std": statistics.stdev(by_repeat) if len(by_repeat) > 1 else None,
            "paired_speedup": paired_speedup(rows, base, base_count=base_count),
            "mean_accepted": {s: mean_accepted(by_sub[s]) for s in present},
            "mean_accepted_overall": mean_accepted(rows),
            "tokens_per_s": statistics.mean(map(throughput, rows)) if rows else None,
            "ctar": {str(w): ctar(rows, w) for w in range(1, 5)},
            "steps": sum(len(r["choices"][0]["accept_lengths"]) for r in rows),
            "new_tokens": sum(sum(r["choices"][0]["new_tokens"]) for r in rows),
            "equal_to_vanilla": SAMPLED if sampled else equality(rows, reference, near_tie),
            "batch_size": size,
            "aggregate_tokens_per_s": aggregate_throughput(rows),
            "stats": stats,
            "statistics": declared_values,
        }
        m = out[name]
        wall = sum(sum(r["choices"][0]["wall_time"]) for r in rows)
        m["ms_per_token"] = 1e3 * wall / m["new_tokens"] if m["new_tokens"] else None
        m["block_sizes"] = block_histogram(rows)
        m["mean_verified"] = mean_block(m["block_sizes"])
        m["breakdown"] = phase_breakdown(m["stats"], wall, m["new_tokens"], m["steps"])
        m["latency"] = endpoint_latency(rows)
    counting = "ids" if base_count is None else "spec_bench"
    return {"subtasks": present, "methods": out, "baseline": baseline, "counting": counting,
            "missing": {k: [list(x) for x in v] for k, v in missing_answers(answers).items()},
            "definitions": DEFINITIONS + [COUNTING[counting]] + statistic_definitions(declared)
            + ([ENDPOINTS] if any(m["latency"] for m in out.values()) else [])
            + ([BATCHED] if any(m["batch_size"] > 1 for m in out.values()) else [])
            + ([CONTINUOUS] if any(r.get("batch", {}).get("continuous")
                                   for rows in answers.values() for r in rows) else [])}

