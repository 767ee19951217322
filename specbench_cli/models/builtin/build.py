"""The stages of a built-in benchmark build, each timed and shown with a Rich progress bar."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging

from ...train.precision import choose_precision, step_seconds
from . import MODEL_DIR, QUESTION_FILE, TRAIN_FILE, sha256_file
from .model import encode_conversations, make_model, timing_step, train
from .quality import evaluate
from .recipe import Recipe
from .tasks_gen import SUBTASKS, generate, question_records, train_records, write_jsonl
from .tokenizer import conversation_text, train_tokenizer

# For the up-front estimate, measured on a 2-core AMD EPYC (2026-12-04, a clean clone's CI): a
# training step costs ~1.05x its timed forward + backward (optimizer, batching), and the quality
# check plus the add-ons (one teacher pass, seven trainers, EAGLE-3's 158 s the largest) ~0.95x
# the model's training (308 s).
STEP_OVERHEAD, ADDONS_SHARE = 1.05, 0.95


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def _quiet_transformers():
    """Hide transformers' own tqdm bars (saving shards) while ours are on screen."""

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _deterministic(seed: int, threads: int):
    """Seeded, deterministic, fixed thread count; the caller's settings come back afterwards.

    Same seed + same thread count on the same machine -> the same bytes.
    """
    was_deterministic, old_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(old_threads)


@contextmanager
def _stage(timings: dict, name: str):
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def _curve(losses: list[float], points: int = 10) -> list[float]:
    """Mean training loss over each tenth of training (batch losses alone are noisy)."""
    size = max(1, len(losses) // points)
    return [round(sum(losses[i:i + size]) / len(losses[i:i + size]), 4) for i in range(0, len(losses), size)]


def build(folder: Path, recipe: Recipe, console: Console) -> dict:
    """Make every file of the benchmark in `folder`; returns what goes into done.json."""
    threads = _threads()
    timings: dict[str, float] = {}
    with _deterministic(recipe.seed, threads), _progress(console) as progress:
        with _stage(timings, "generate"):
            counts = recipe.train_counts()
            bar = progress.add_task("generating tasks", total=sum(counts.values()), info="")
            data = generate(recipe.seed, counts, recipe.n_heldout,
                            progress=lambda n: progress.advance(bar, n))
            write_jsonl(folder / TRAIN_FILE, train_records(data.train))
            write_jsonl(folder / QUESTION_FILE, question_records(data.heldout))

        with _stage(timings, "tokenizer"):
            bar = progress.add_task("training tokenizer", total=1, info="")
            texts = (conversation_text(c.turns, c.answers) for c in data.train)
            tokenizer = train_tokenizer(texts, recipe.vocab_size)
            progress.update(bar, completed=1, info=f"vocab {len(tokenizer)}")

        with _stage(timings, "encode"):
            bar = progress.add_task("encoding conversations", total=1, info="")
            examples = encode_conversations(tokenizer, [(c.turns, c.answers) for c in data.train])
            progress.update(bar, completed=1, info=f"{sum(len(ids) for ids, _ in examples)} tokens")

        with _stage(timings, "train"):
            model = make_model(recipe, tokenizer)
            step = timing_step(model, examples, recipe, tokenizer.pad_token_id)
            precision, why = choose_precision(f"builtin model {recipe.hash()}", step)
            per_step = step_seconds(step, precision, "cpu", repeats=3)
            model.zero_grad(set_to_none=True)
            minutes = recipe.steps * per_step * STEP_OVERHEAD / 60
            progress.console.print(
                f"training precision: {why}\nestimate for this machine: the model ~{minutes:.1f} "
                f"min ({recipe.steps} steps of ~{1e3 * per_step:.0f} ms), the quality check and "
                f"the methods' add-ons ~{ADDONS_SHARE * minutes:.1f} min more", highlight=False)
            bar = progress.add_task(f"training model ({precision})", total=recipe.steps, info="")

            def on_step(step: int, loss: float) -> None:
                progress.update(bar, completed=step + 1, info=f"loss {loss:.3f}")

            losses = train(model, examples, recipe, tokenizer.pad_token_id, on_step, precision)

        with _stage(timings, "quality"):
            total = min(recipe.eval_per_subtask, recipe.n_heldout) * len(SUBTASKS)
            bar = progress.add_task("evaluating held-out", total=total, info="")
            quality = evaluate(model, tokenizer, data.heldout, recipe.eval_per_subtask,
                               recipe.max_new_tokens, on_question=lambda: progress.advance(bar))

        with _stage(timings, "save"), _quiet_transformers():
            model_dir = folder / MODEL_DIR
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)

    timings["total"] = round(sum(timings.values()), 2)
    return {
        "recipe": recipe.as_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_precision": why,
        "train_loss_curve": _curve(losses),
        "quality": quality,
        "hashes": {name: sha256_file(model_dir / name) for name in ("tokenizer.json", "model.safetensors")},
        "timings": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
