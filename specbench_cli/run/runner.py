"""Runs methods over questions on one loaded model: warm-up, timing, answer files, resume.

Questions are interleaved (for each question, every method in turn) so that drift in machine
speed hits all methods alike. Every finished question is appended to its method's answer file
and flushed to disk at once; `--resume` reads those files back and skips what is there.

At batch size B > 1 (`--batch-size`; the method then runs under the name 'pld+b4') the questions
are dealt into consecutive batches of B, and each batch is decoded by every method in turn, its
sequences together (engine/batch.py). Each answer line keeps its own sequence's wall time (from
the batch's start to its own end) and the batch's, from which the aggregate throughput comes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..analysis.metrics import load_answers
from ..analysis.results import ANSWERS_DIR, answer_file_name
from ..bench.prompts import build_prompt_ids
from ..bench.questions import Question
from ..engine import Engine, sync
from ..engine.batch import BatchEngine, run_batch
from ..engine.kernels import cpu_name, summary
from ..errors import SpecbenchError
from ..files import read_json
from ..methods import METHODS, Generation, Method, base_name, batch_size_of, unbatched
from ..names import budget_of
from ..methods.base import Decoding, on_engine
from ..methods.verify import Phases, Sampling

# What happens to a turn whose prompt + max_new_tokens would run past the model's context.
OVER_CONTEXT = ("error", "cap")


class ContextError(SpecbenchError):
    """A prompt that does not fit the model's context; one line naming the question."""


@dataclass
class RunConfig:
    """Everything that decides a run's numbers; stored in run.json and checked on --resume."""
    model: str
    bench: str
    bench_sha256: str
    subtasks: list[str]
    limit: int | None
    methods: list[str]
    method_options: dict[str, dict] = field(default_factory=dict)
    template: str = "vicuna_v1.1"
    max_new_tokens: int = 1024
    repeats: int = 1
    warmup: int = 3
    dtype: str = "fp32"
    device: str = "cpu"
    threads: int | None = None   # CPU threads (torch's pool, which the fused step shares too)
    over_context: str = "error"
    breakdown: bool = False      # time prefill/draft/verify apart (device synced around each)
    temperature: float = 0.0     # 0: greedy; > 0: sampling (methods keep the target's distribution)
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    compile: bool = False        # static-shape compiled forwards (engine/static.py)
    batch_sizes: list[int] = field(default_factory=lambda: [1])   # methods ran at each (`+bB`)
    continuous: bool = False     # B > 1: a finished question's place goes to the next at once
    budget: list = field(default_factory=lambda: ["default"])    # --budget: default, auto, N
    endpoint: list = field(default_factory=list)     # NAME=URL servers as rows (run/endpoint.py)
    baseline: str = "vanilla"                        # --endpoint: the row speedups divide by
    request_timeout: float = 600.0                   # --endpoint: seconds a request may take

    @property
    def sampling(self):
        """The run's Sampling, None when greedy."""
        if not self.temperature:
            return None
        return Sampling(self.temperature, self.top_p, self.top_k, self.seed)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    import transformers     # seconds to import, for its version only

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
    }


def model_context(folder: Path) -> int | None:
    """The positions the model was trained for (config.json's max_position_embeddings)."""
    value = read_json(Path(folder) / "config.json").get("max_position_embeddings")
    return int(value) if value else None


def token_budget(question: Question, turn: int, prompt_len: int, max_new_tokens: int,
                 context: int | None, policy: str) -> int:
    """New tokens a turn may generate: max_new_tokens, or (policy 'cap') what fits the context.
    Past the context RoPE runs beyond its trained range, so that is never done silently."""
    if context is None or prompt_len + max_new_tokens <= context:
        return max_new_tokens
    if policy == "cap" and prompt_len < context:
        return context - prompt_len
    raise ContextError(
        f"question {question.question_id} ({question.subtask}), turn {turn + 1}: a prompt of "
        f"{prompt_len} tokens + --max-new-tokens {max_new_tokens} exceeds the model's context of "
        f"{context} positions; lower --max-new-tokens, leave the question out (--tasks, "
        f"--limit) or pass --over-context cap")


def check_context(questions: list[Question], tokenizer, template: str, max_new_tokens: int,
                  folder: Path, policy: str) -> None:
    """Before anything is written: every question's last turn, earlier answers taken as empty
    (a lower bound of the real prompt), must leave room for its budget."""
    context = model_context(folder)
    if context is None:
        return
    for q in questions:
        ids = build_prompt_ids(tokenizer, template, list(q.turns), [""] * (len(q.turns) - 1))
        token_budget(q, len(q.turns) - 1, len(ids), max_new_tokens, context, policy)


def answer_text(tokenizer, tokens: list[int], eos_ids: set[int]) -> str:
    if tokens and tokens[-1] in eos_ids:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def read_done(path: Path) -> set[tuple[int, int]]:
    """(question_id, repeat) pairs already answered, each line checked (a damaged one is one
    line naming it). A last line cut short by a kill is removed, so it is answered again."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return {(row["question_id"], row.get("repeat", 0)) for row in load_answers(path)}


class Runner:
    def __init__(self, config: RunConfig, engine: Engine, tokenizer, questions: list[Question],
                 out_dir: Path, model_id: str):
        self.config = config
        self.engine = engine
        self.tokenizer = tokenizer
        self.questions = questions
        self.out_dir = out_dir
        self.model_id = model_id
        self.eos_ids = eos_token_ids(engine, tokenizer)
        self.context = engine.config.max_position_embeddings
        # One method object per method, whatever the batch sizes it runs at ('pld', 'pld+b4'),
        # but one per row where the budget is fitted per batch size (use_budgets).
        self.methods: dict[str, Method] = {
            name: METHODS[base_name(name)](engine, self.eos_ids, tokenizer,
                                           **config.method_options.get(name, {}))
            for name in dict.fromkeys(map(unbatched, config.methods))
            if budget_of(name) != "auto"}
        self.fits: dict[str, dict] = {}

    def use_budgets(self, fits: dict[str, dict]):
        """The rows whose budget was fitted (`run --budget auto`, run/budget.py: row → its
        fit), each built with the options its chosen budget sets."""
        self.fits = fits
        for row, fit in fits.items():
            options = {**self.config.method_options.get(unbatched(row), {}), **fit["options"]}
            self.methods[row] = METHODS[base_name(row)](self.engine, self.eos_ids,
                                                        self.tokenizer, **options)

    def method(self, row: str) -> Method:
        """The method object that answers for run row `row`."""
        return self.methods[row] if row in self.methods else self.methods[unbatched(row)]

    # One question, all its turns, for one method. Each turn sees the method's own earlier answers.
    # `batched`: other sequences decode beside it; its phases are not timed, since theirs overlap.
    def answer(self, method: Method, question: Question, batched: bool = False
               ) -> tuple[list[str], list[Generation], list[float]]:
        texts, gens, times = [], [], []
        device = self.engine.device
        for i in range(len(question.turns)):
            ids = build_prompt_ids(self.tokenizer, self.config.template,
                                   list(question.turns[:i + 1]), texts)
            budget = token_budget(question, i, len(ids), self.config.max_new_tokens,
                                  self.context, self.config.over_context)
            phases = Phases(device) if self.config.breakdown and not batched else None
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode():
                gen = method.generate(ids, budget, Decoding(self.config.sampling, phases))
            sync(device)
            times.append(time.perf_counter() - start)
            if phases is not None:
                gen.stats.update({f"{k}_seconds": v for k, v in phases.seconds.items()})
            gens.append(gen)
            texts.append(answer_text(self.tokenizer, gen.tokens, self.eos_ids))
        return texts, gens, times

    def answer_line(self, name: str, question: Question, repeat: int, texts, gens, times) -> dict:
        """Spec-Bench's answer-line format, plus our fields (token ids, repeat, method stats)."""
        return {
            **spec_bench_line(name, question, repeat, f"{self.model_id}-{name}", texts,
                              [g.steps for g in gens], [len(g.tokens) for g in gens], times,
                              [a for g in gens for a in g.accept_lengths]),
            "token_ids": [g.tokens for g in gens],
            "turn_accept_lengths": [g.accept_lengths for g in gens],
            "stats": [g.stats for g in gens],
        }

    def answer_batch(self, method: Method, questions: list[Question], width: int | None = None
                     ) -> tuple[list, float]:
        """The questions decoded together by `method`, at most `width` at once (all, by
        default): each one's (texts, generations, times), and the batch's wall time."""
        sync(self.engine.device)
        start = time.perf_counter()
        with on_engine(method, BatchEngine(self.engine)):
            results = run_batch(self.engine, [lambda q=q: self.answer(method, q, batched=True)
                                              for q in questions], width)
        sync(self.engine.device)
        return results, time.perf_counter() - start

    def warm_up(self, progress=None):
        """The first question, `warmup` times per method, unrecorded (kernels, caches, allocator);
        and the first batch once per method and batch size above 1."""
        if not self.config.warmup:
            return
        sizes = [b for b in self.config.batch_sizes if b > 1]
        # each method object once per batch size it answers at
        at = {size: {id(self.method(n)): (n, self.method(n)) for n in self.config.methods
                     if batch_size_of(n) == size}.values() for size in [1, *sizes]}
        task = progress.add_task("warm-up", total=self.config.warmup * len(at[1]) + sum(
            len(at[size]) for size in sizes), info="") if progress else None
        for _ in range(self.config.warmup):
            for name, method in at[1]:
                self.answer(method, self.questions[0])
                if progress:
                    progress.update(task, advance=1, info=name)
        for size in sizes:
            for name, method in at[size]:
                self.answer_batch(method, self.questions[:size])
                if progress:
                    progress.update(task, advance=1, info=f"{name} at batch {size}")
        if progress:
            progress.remove_task(task)

    def answer_unit(self, question: Question, repeat: int, names: list[str]):
        """The named methods on one question in one repeat, in turn: their answer lines, each
        yielded as soon as it exists (so the caller can store it before the next starts)."""
        for name in names:
            texts, gens, times = self.answer(self.method(name), question)
            yield self.answer_line(name, question, repeat, texts, gens, times)

    def answer_batches(self, batch: list[Question], repeat: int, names: list[str],
                       done: dict[str, set]):
        """The named methods (all at one batch size) on one batch of questions in one repeat, in
        turn: the answer lines not in `done` yet (a resumed batch is decoded whole again, so
        that its sequences keep their company; only its missing lines are written)."""
        for name in names:
            size = batch_size_of(name)
            results, wall = self.answer_batch(self.method(name), batch, size)
            for question, (texts, gens, times) in zip(batch, results):
                if (question.question_id, repeat) in done[name]:
                    continue
                line = self.answer_line(name, question, repeat, texts, gens, times)
                line["batch"] = {"size": size, "questions": len(batch),
                                 "first_question": batch[0].question_id, "wall_time": wall,
                                 "continuous": self.config.continuous}
                yield line

    def run(self, progress=None):
        files = answer_files(self.out_dir, self.config.methods)
        todo = pending_units(self.config, self.questions, files)
        batches = pending_batches(self.config, self.questions, files)
        if not todo and not batches:
            return
        self.warm_up(progress)
        done = {name: read_done(path) for name, path in files.items()}
        # A pass is one repeat at one batch size. Each starts from fresh learned state, so that
        # a method that learns across questions (suffix, recycling, sam) meets the same
        # questions in the same order at every batch size, not after the passes before it (a
        # resumed pass starts afresh at its first missing question).
        work = [((repeat, 1), unit_label(question, repeat),
                 partial(self.answer_unit, question, repeat, names))
                for repeat, question, names in todo]
        work += [((repeat, batch_size_of(names[0])),
                  f"batch of {len(batch)} from {unit_label(batch[0], repeat)}",
                  partial(self.answer_batches, batch, repeat, names, done))
                 for repeat, batch, names in batches]
        task = progress.add_task("questions", total=len(work), info="") if progress else None
        current = None
        for run_pass, label, answer_lines in work:
            if run_pass != current:
                current = run_pass
                for method in self.methods.values():
                    method.reset()
            for line in answer_lines():
                append_line(files[line["method"]], line)
                if progress:
                    progress.update(task, info=f"{label} {line['method']} "
                                               f"{line_rate(line):.0f} tok/s")
            if progress:
                progress.update(task, advance=1)


def spec_bench_line(name: str, question: Question, repeat: int, model_id: str, texts: list[str],
                    steps: list, new_tokens: list[int], times: list[float],
                    accept_lengths: list[int]) -> dict:
    """An answer line's fields in Spec-Bench's format (evaluation/speed.py reads them) and the
    ones every row of ours adds: its name, subtask and repeat, the file's own id."""
    return {
        "question_id": question.question_id,
        "category": question.category,
        "answer_id": f"{name}-{question.question_id}-{repeat}",
        "model_id": model_id,
        "tstamp": time.time(),
        "choices": [{"index": 0, "turns": texts, "decoding_steps": steps,
                     "new_tokens": new_tokens, "wall_time": times,
                     "accept_lengths": accept_lengths}],
        "method": name,
        "subtask": question.subtask,
        "repeat": repeat,
        **({"original_id": question.original_id} if question.original_id else {}),
    }


def answer_files(out_dir: Path, methods: list[str]) -> dict[str, Path]:
    answers = out_dir / ANSWERS_DIR
    answers.mkdir(parents=True, exist_ok=True)
    return {name: answers / answer_file_name(name) for name in methods}


def pending_units(config: RunConfig, questions: list[Question],
                  files: dict[str, Path]) -> list[tuple[int, Question, list[str]]]:
    """What is left to do at batch size 1, in run order: (repeat, question, methods that have
    not answered it in that repeat), read back from the answer files (--resume)."""
    done = {name: read_done(path) for name, path in files.items()}
    single = [n for n in config.methods if batch_size_of(n) == 1]
    units = []
    for repeat in range(config.repeats):
        for question in questions:
            names = [n for n in single if (question.question_id, repeat) not in done[n]]
            if names:
                units.append((repeat, question, names))
    return units


def pending_batches(config: RunConfig, questions: list[Question], files: dict[str, Path]
                    ) -> list[tuple[int, list[Question], list[str]]]:
    """What is left to do at batch sizes above 1, in run order: (repeat, a batch of consecutive
    questions, methods at that batch size missing an answer in it). Continuous batching decodes
    a pass's questions missing an answer as one batch, B of them at a time."""
    done = {name: read_done(path) for name, path in files.items()}
    units = []
    for repeat in range(config.repeats):
        for size in sorted(b for b in config.batch_sizes if b > 1):
            at_size = [n for n in config.methods if batch_size_of(n) == size]
            missing = [q for q in questions
                       if any((q.question_id, repeat) not in done[n] for n in at_size)]
            batches = [missing] if config.continuous else \
                [questions[first:first + size] for first in range(0, len(questions), size)]
            for batch in batches:
                names = [n for n in at_size
                         if any((q.question_id, repeat) not in done[n] for q in batch)]
                if names:
                    units.append((repeat, batch, names))
    return units


def unit_label(question: Question, repeat: int) -> str:
    return f"q{question.question_id} {question.subtask} r{repeat + 1}"


def line_rate(line: dict) -> float:
    """An answer line's tokens per second over all its turns."""
    choice = line["choices"][0]
    return sum(choice["new_tokens"]) / max(sum(choice["wall_time"]), 1e-9)


def append_line(path: Path, row: dict):
    """One whole line per write, flushed and synced: a kill loses at most the line in flight."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def eos_token_ids(engine: Engine, tokenizer) -> set[int]:
    ids = set()
    eos = engine.config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def run_meta(config: RunConfig, engine: Engine, runner: Runner, dtype_why: str = "given") -> dict:
    """run.json's content: the configuration, the machine, the target, how its products run and
    why in this dtype, and each method."""
    choice = getattr(engine, "kernel_choice", None)
    return {
        "config": asdict(config),
        "dtype_choice": dtype_why,
        "kernels": dict(summary(choice)) if choice else None,
        "environment": environment(engine.device),
        "model_parameters": engine.num_parameters(),
        "methods": {name: describe(runner.method(name)) for name in config.methods},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(m: Method) -> dict:
    declared = type(m).budget
    return {"options": m.options, "overhead": m.parameter_overhead(), "lossless": m.lossless,
            "info": m.info(), "statistics": m.declared_statistics(),
            "budget": declared.of(m.options) if declared else None}


def write_run_json(out_dir: Path, meta: dict) -> dict:
    """Written whole under another name, then renamed: a kill never leaves half a run.json."""
    tmp = out_dir / "run.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out_dir / "run.json")
    return meta
