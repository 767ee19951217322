"""`run --budget auto`: each method's verification width fitted to this device, model, dtype
and batch size, before the timed questions.

A method's budget is the tokens one verification forward takes (Method.budget). For each
candidate budget b the method answers the fit questions (held-out: questions the run does not
time, up to five a subtask taken round-robin, as many as vanilla answers in FIT_SECONDS and at
least one a subtask; every turn, up to FIT_TOKENS new tokens a turn; never reported as results) with its phases timed
as `--breakdown` times them, in passes until FIT_SECONDS have gone by (a small model answers in
milliseconds). That gives MAT(b), the block sizes it verified, and its drafting δ(b) and other
work ρ(b) per step, in vanilla's one-token steps (measured on the same questions). A profile of the engine at the fit prompts' length (`specbench
profile`'s measurements, with joined forwards at each batch size above one) gives c(n) and
c_B(n). The cost model then predicts the speedup at batch size B (costmodel.predicted_at_batch):

    vanilla's time per token / (π + (c̄_B(b) + B·(δ(b) + ρ(b))) / (B·MAT(b)))

and each batch size gets the budget with the highest prediction. Candidates are 2, 4, 8, ... 64
and the method's own budget, in increasing order until the prediction at batch size 1 falls
below FALLING of the best so far (past the peak MAT saturates while c(b) grows); then 3/4 and
3/2 of each batch size's best.

Every measurement (a method at a budget, vanilla, the profile) is cached in
$SPECBENCH_HOME/budgets/fits.json under the model, dtype, device, CPU, threads, the method's
options and the fit questions: a second run fits at once.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from copy import copy
from dataclasses import replace
from pathlib import Path

import torch

from ..analysis.costmodel import interpolated_cost, predicted_at_batch, terms
from ..analysis.metrics import block_histogram, mean_accepted, mean_block, method_stats, \
    phase_breakdown
from ..bench.prompts import build_prompt_ids
from ..engine.kernels import cached_entry, cpu_name
from ..errors import SpecbenchError
from ..files import specbench_home
from ..methods import METHODS, Method, base_name, batch_size_of, batched, unbatched
from ..methods.base import LARGEST_BUDGET, SMALLEST_BUDGET
from ..names import without_budget

GRID = (2, 4, 8, 16, 32, 64)
FALLING = 0.8          # stop widening once the prediction is below this share of the best
TIE = 0.01             # predictions this close are equal (the fit's timing noise)
FIT_TOKENS = 128       # new tokens per fit answer's turn (at most the run's)
FIT_SECONDS, MAX_PASSES = 2.0, 32    # passes over the fit questions: until 2 s, at most 32
VERSION = 2            # of what an entry holds; another version's entries are measured again


def fit_budgets(runner, rows: list[str], questions: list, model_key: dict, progress=None
                ) -> dict[str, dict]:
    """Row name ('pld@budget=auto', 'pld@budget=auto+b4') → the fit: the chosen budget, the
    options it sets, the prediction that chose it and every candidate's terms."""
    started = time.perf_counter()
    fitter = Fitter(runner, questions, model_key, progress)
    sizes: dict[str, list[int]] = {}
    for row in rows:
        sizes.setdefault(unbatched(row), []).append(batch_size_of(row))
    out = {}
    for name, batch_sizes in sizes.items():
        out.update(fitter.fit(name, sorted(batch_sizes)))
    for record in out.values():
        record["fit_seconds"] = time.perf_counter() - started
    return out


def search(measure, predicted, own: int | None, batch_sizes: list[int]) -> dict[int, dict]:
    """Budget → its measured point: GRID and the method's own budget in increasing order, until
    the prediction at batch size 1 falls below FALLING of the best so far; then 3/4 and 3/2 of
    each batch size's best. `measure(budget)` → point, `predicted(point, size)` → speedup."""
    points: dict[int, dict] = {}
    best = 0.0
    for budget in sorted({*GRID, *([own] if own else [])}):
        points[budget] = measure(budget)
        speedup = predicted(points[budget], 1)
        if speedup < FALLING * best:
            break
        best = max(best, speedup)
    for size in batch_sizes:
        top = best_budget(points, lambda point: predicted(point, size))
        for budget in (top * 3 // 4, top * 3 // 2):
            if SMALLEST_BUDGET <= budget <= LARGEST_BUDGET and budget not in points:
                points[budget] = measure(budget)
    return points


def best_budget(points: dict[int, dict], predicted) -> int:
    """The smallest budget whose point `predicted(point)` rates within TIE of the highest: a
    fit's timings differ by a few percent from pass to pass, and of two budgets that predict
    alike the smaller verifies less (and costs less at larger batch sizes)."""
    ratings = {b: predicted(p) for b, p in points.items()}
    top = max(ratings.values())
    return min(b for b, r in ratings.items() if r >= top * (1 - TIE))


def predicted_speedup(point: dict, vanilla: dict, profile: dict, context: int, size: int,
                      share: float = 1.0) -> float:
    """The cost model's speedup at batch size `size` for a method whose fit answers gave
    `point` (MAT, block sizes, phases), against vanilla's on the same questions: verification
    priced by the profile's c_B(n), the rest in vanilla's one-token steps as measured."""
    blocks = {int(k): n for k, n in point["block_sizes"].items()}
    if not blocks:
        return 0.0
    unit = vanilla["breakdown"]["ms_per_step"]["verify"]
    return predicted_at_batch(size, point["mean_accepted_overall"], blocks, profile, share,
                              terms(point, unit), terms(vanilla, unit), context)


def verify_cost(point: dict, profile: dict, context: int, share: float = 1.0) -> float:
    """c̄: the profile's c(n) averaged over the point's verified blocks (× the share of layers
    verification runs)."""
    blocks = {int(k): n for k, n in point["block_sizes"].items()}
    return share * sum(n * interpolated_cost(profile, k, context)
                       for k, n in blocks.items()) / max(sum(blocks.values()), 1)


class Fitter:
    """Measures what the fit needs on one runner's engine, through the cache."""

    def __init__(self, runner, questions: list, model_key: dict, progress=None):
        subtasks = len({q.subtask for q in questions})
        # The run's runner answering as the fit does: phases timed, at most FIT_TOKENS new
        # tokens a turn, capped at the context (held-out questions were never checked
        # against it as the timed ones were).
        self.tokens = min(FIT_TOKENS, runner.config.max_new_tokens)
        self.runner = copy(runner)
        self.runner.config = replace(runner.config, breakdown=True, over_context="cap",
                                     max_new_tokens=self.tokens)
        self.progress = progress
        engine, config = runner.engine, runner.config
        self.path = specbench_home() / "budgets" / "fits.json"
        lengths = {q.question_id: len(build_prompt_ids(runner.tokenizer, config.template,
                                                       [q.turns[0]], [])) for q in questions}
        room = runner.context or float("inf")
        pool = [q for q in questions if lengths[q.question_id] < room]
        if not pool:
            raise SpecbenchError("--budget auto: every held-out question's prompt fills the "
                                 "model's context")
        self.key = {"version": VERSION, **model_key, "dtype": config.dtype,
                    "device": str(engine.device), "cpu": cpu_name(),
                    "threads": torch.get_num_threads(), "template": config.template,
                    "sampling": [config.temperature, config.top_p, config.top_k, config.seed],
                    "tokens": self.tokens}
        self.cached = True
        # As many of the pool (round-robin over the subtasks) as vanilla answers in
        # FIT_SECONDS, one per subtask at least: a small model's fit then samples as widely
        # as the run it tunes, a large one's stays short. Decided once, then cached.
        count = self.cached_entry({"what": "questions", "pool": [q.question_id for q in pool]},
                                  lambda: {"count": self.affordable(pool, subtasks)})["count"]
        self.questions = pool[:count]
        self.key["questions"] = [q.question_id for q in self.questions]
        self.context = int(statistics.median(lengths[q.question_id] for q in self.questions))
        self.vanilla = self.measured("vanilla", {}, None)
        self.batch_sizes: list[int] = sorted({b for b in config.batch_sizes if b > 1})
        self.profile = self.cached_entry({"what": "profile", "context": self.context,
                                          "batch_sizes": self.batch_sizes}, self.measure_profile)

    def fit(self, name: str, batch_sizes: list[int]) -> dict[str, dict]:
        """The budget of run row `name` (its base options) at each batch size."""
        declared = METHODS[base_name(name)]
        options = {**declared.defaults, **self.runner.config.method_options.get(name, {})}
        own = declared.budget.of(options)
        self.cached = True          # until a point is measured rather than read

        def measure(budget: int) -> dict:
            chosen = declared.budget.to_options(budget, options)
            return self.measured(name, {**options, **chosen}, budget)

        def predicted(point: dict, size: int) -> float:
            return predicted_speedup(point, self.vanilla, self.profile, self.context, size,
                                     point["share"])
        points = search(measure, predicted, own, batch_sizes)
        out = {}
        for size in batch_sizes:
            chosen = best_budget(points, lambda point: predicted(point, size))
            out[batched(name, size)] = {
                "budget": chosen, "predicted": predicted(points[chosen], size),
                "batch_size": size, "options": declared.budget.to_options(chosen, options),
                "default_budget": own, "default_predicted":
                    predicted(points[own], size) if own in points else None,
                "candidates": {str(b): self.terms(points[b], size) for b in sorted(points)},
                "questions": self.key["questions"], "tokens": self.tokens,
                "context": self.context, "cached": self.cached}
        return out

    def terms(self, point: dict, size: int) -> dict:
        """A candidate as the report shows it: prediction, MAT, mean block, and its costs in
        one-token steps (c̄ at batch size 1)."""
        share = point["share"]
        t = terms(point, self.vanilla["breakdown"]["ms_per_step"]["verify"])
        return {"predicted": predicted_speedup(point, self.vanilla, self.profile, self.context,
                                               size, share),
                "mean_accepted": point["mean_accepted_overall"], "block": point["mean_verified"],
                "verify_cost": verify_cost(point, self.profile, self.context, share),
                "draft_cost": t["draft"], "rest_cost": t["rest"]}

    # ------------------------------------------------------------------ measurements, cached

    def cached_entry(self, what: dict, measure) -> dict:
        key = {**self.key, **what}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

        def measured():
            self.cached = False
            return {"key": json.loads(json.dumps(key, default=str)), "value": measure()}
        entry = cached_entry(self.path, digest[:24], lambda e: valid(e, what["what"]), measured)
        return entry["value"]

    def measured(self, name: str, options: dict, budget: int | None) -> dict:
        """MAT, block sizes and phases of `name` with `options` on the fit questions."""
        what = {"what": "point", "method": without_budget(name), "budget": budget,
                "options": {k: stamp(v) for k, v in sorted(options.items())}}
        return self.cached_entry(what, lambda: self.measure(name, options, budget))

    def measure(self, name: str, options: dict, budget: int | None) -> dict:
        runner = self.runner
        method: Method = METHODS[base_name(name)](runner.engine, runner.eos_ids,
                                                  runner.tokenizer, **options)
        label = f"fit {without_budget(name)}" + (f" at {budget}" if budget else "")
        task = self.progress.add_task(label, total=None, info="") if self.progress else None
        runner.answer(method, self.questions[0])        # warm-up, unrecorded
        lines, started, passes = [], time.perf_counter(), 0
        # Passes over the questions (each from the same start) until FIT_SECONDS have gone by:
        # a small model's answers take milliseconds, too few to time drafting by.
        while passes < MAX_PASSES and (not passes or time.perf_counter() - started < FIT_SECONDS):
            method.reset()
            for question in self.questions:
                if self.progress:
                    self.progress.update(task, info=f"q{question.question_id}")
                texts, gens, times = runner.answer(method, question)
                lines.append(runner.answer_line(name, question, passes, texts, gens, times))
            passes += 1
        if self.progress:
            self.progress.remove_task(task)
        # the share of layers its verification runs (Kangaroo's deep ones), for the cost model
        return {**point_of(lines), "passes": passes,
                "share": method.info().get("verify_layer_share", 1.0)}

    def affordable(self, pool: list, subtasks: int) -> int:
        """How many of `pool` vanilla answers within FIT_SECONDS (at least `subtasks`)."""
        method = METHODS["vanilla"](self.runner.engine, self.runner.eos_ids)
        self.runner.answer(method, pool[0])              # warm-up, unrecorded
        started = time.perf_counter()
        count = 0
        while count < len(pool) and (count < subtasks
                                     or time.perf_counter() - started < FIT_SECONDS):
            self.runner.answer(method, pool[count])
            count += 1
        return count

    def measure_profile(self) -> dict:
        from .profile import measured_profile
        return measured_profile(self.runner.engine, self.runner.config.model, [self.context],
                                progress=self.progress, batch_sizes=self.batch_sizes)


# What each kind of cache entry must hold before it is trusted (else it is measured again).
SHAPES = {"point": {"mean_accepted_overall": (int, float), "block_sizes": dict,
                    "breakdown": dict, "share": (int, float)},
          "questions": {"count": int}, "profile": {"latency_seconds": dict}}


def valid(entry, what: str) -> bool:
    """Whether a cache entry is what this version writes for `what` (a hand edit, a cut file
    or an older version's entry is not)."""
    value = entry.get("value") if isinstance(entry, dict) else None
    if not isinstance(value, dict) or not isinstance(entry.get("key"), dict) \
            or entry["key"].get("version") != VERSION:
        return False
    if not all(isinstance(value.get(k), kind) for k, kind in SHAPES[what].items()):
        return False
    return what != "point" or all(isinstance(value["breakdown"].get(k), dict)
                                  for k in ("ms_per_step", "ms_per_token"))


def point_of(lines: list[dict]) -> dict:
    """What the cost model reads of a method's answers (as analysis.metrics.summarize writes
    it): MAT, the verified block sizes and where the time went."""
    stats, _ = method_stats(lines)
    wall = sum(sum(r["choices"][0]["wall_time"]) for r in lines)
    tokens = sum(sum(r["choices"][0]["new_tokens"]) for r in lines)
    steps = sum(len(r["choices"][0]["accept_lengths"]) for r in lines)
    blocks = block_histogram(lines)
    return {"mean_accepted_overall": mean_accepted(lines), "block_sizes": blocks,
            "mean_verified": mean_block(blocks), "tokens": tokens, "steps": steps,
            "ms_per_token": 1e3 * wall / tokens if tokens else None,
            "breakdown": phase_breakdown(stats, wall, tokens, steps)}


def model_stamp(model: str, folder: Path) -> dict:
    """The target as the cache key holds it: its name and its folder's files (name, size,
    modification time), so that a model rebuilt in place is measured again."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in Path(folder).iterdir() if p.is_file())
    return {"model": model, "files": files}


def stamp(value):
    """An option's value as the cache key holds it: a file or folder with its modification
    time, so that an add-on rebuilt in place is measured again."""
    if isinstance(value, str) and len(value) < 4096:
        path = Path(value)
        try:
            if path.exists():
                return [value, path.stat().st_mtime_ns]
        except OSError:
            pass
    return value
