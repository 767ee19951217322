"""One training loop for every trainable add-on: AdamW, linear warm-up then cosine decay,
gradient clipping, a Rich progress bar, checkpoints to resume from, safetensors output."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import save

from ..drafters.addon_folder import mark_finished, mark_unfinished
from ..errors import SpecbenchError
from ..files import atomic_write, checked

CHECKPOINT = "checkpoint.pt"
TRAINING_LOG = "training_log.jsonl"


@dataclass
class TrainSettings:
    steps: int
    lr: float
    warmup: int
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    clip_value: float | None = None     # Kangaroo clips gradients by value
    clip_norm: float | None = None
    checkpoint_every: int = 100


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(module: torch.nn.Module, step_fn: Callable[[object], tuple[torch.Tensor, dict]],
          data: Iterator, settings: TrainSettings, out_dir: Path, console: Console | None = None,
          label: str = "training") -> dict:
    """Minimise step_fn(batch)'s loss over module's trainable parameters.

    Every `checkpoint_every` steps (and on Ctrl-C) the module, optimizer, step and data position
    are saved to out_dir/checkpoint.pt; a later call with the same out_dir resumes from there.
    Returns the last step's metrics."""
    console = console or Console()
    if settings.checkpoint_every < 1:
        raise SpecbenchError(f"--checkpoint-every must be at least 1 (got "
                             f"{settings.checkpoint_every})")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas,
                            weight_decay=settings.weight_decay)
    mark_unfinished(out_dir)       # loaders refuse the folder until `finish` has written it
    ckpt = out_dir / CHECKPOINT
    start = resume(ckpt, module, opt, console)
    if start:
        console.print(f"resuming {label} from step {start} ({ckpt})")
    for _ in range(start):       # replay the data order so a resumed run sees the same batches
        next(data)
    metrics: dict = {}
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    module.train()
    done = start        # the steps whose update the module holds (what a checkpoint records)
    # Every step's metrics, for curves (`benchmarks/kangaroo_claims.py`); a resumed run goes on
    # from its checkpoint's step.
    log_path = out_dir / TRAINING_LOG
    atomic_write(log_path, log_until(log_path, start))
    try:
        with Progress(*columns, console=console) as progress, open(log_path, "a") as log:
            task = progress.add_task(label, total=settings.steps, completed=start, info="")
            for step in range(start, settings.steps):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, settings)
                loss, metrics = step_fn(next(data))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if settings.clip_value is not None:
                    torch.nn.utils.clip_grad_value_(params, settings.clip_value)
                if settings.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
                opt.step()
                done = step + 1
                metrics = {"loss": loss.item(), **metrics}
                log.write(json.dumps({"step": done, **metrics}) + "\n")
                progress.update(task, advance=1, info="  ".join(
                    f"{k} {v:.3f}" for k, v in metrics.items()))
                if done % settings.checkpoint_every == 0 and done < settings.steps:
                    log.flush()     # the log holds every step the checkpoint does
                    save_checkpoint(ckpt, module, opt, done)
    except KeyboardInterrupt:       # Ctrl-C: keep what was done
        save_checkpoint(ckpt, module, opt, done)
        console.print(f"interrupted at step {done}; run the same command again to resume")
        raise
    module.eval()
    return metrics


def save_checkpoint(path: Path, module, opt, step: int):
    tmp = path.with_suffix(".tmp")
    torch.save({"module": module.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def resume(path: Path, module, opt, console: Console) -> int:
    """The step the checkpoint at `path` resumes from, after loading it into module and
    optimizer; 0 without one. One that cannot be used (truncated, garbage, saved with other
    settings) is set aside as <name>.corrupt with one line, and training starts over."""
    if not path.exists():
        return 0
    fresh = copy.deepcopy((module.state_dict(), opt.state_dict()))
    try:
        state = checked(torch.load(path, map_location="cpu", weights_only=True),
                        {"module": dict, "optimizer": dict, "step": int}, str(path))
        if state["step"] < 0:
            raise ValueError(f"negative step {state['step']}")
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        return state["step"]
    # Whatever torch.load or load_state_dict raise (their errors vary by damage), the file is
    # unusable; a failed load may have filled part of the module, so it starts over as it was.
    except Exception as err:
        module.load_state_dict(fresh[0])
        opt.load_state_dict(fresh[1])
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        console.print(f"checkpoint {path} cannot be used ({reason}); set aside as {aside.name}, "
                      "training starts over", highlight=False, markup=False, soft_wrap=True)
        return 0


def log_until(path: Path, step: int) -> str:
    """The training log's lines up to `step` (where a resumed run goes on); later ones and a
    line a kill cut short are dropped."""
    if not step or not path.exists():
        return ""
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(logged, int) and logged <= step:
            kept.append(line + "\n")
    return "".join(kept)


def finish(out_dir: Path, module: torch.nn.Module, config: dict, weights: str = "model.safetensors"):
    """Write the trained weights (safetensors) and config.json, each whole, then mark the folder
    finished and drop the resume checkpoint. Until the mark is gone, loaders refuse the folder
    and the same command finishes it."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(out_dir / weights, save(state))
    atomic_write(out_dir / "config.json", json.dumps(config, indent=2))
    mark_finished(out_dir)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)


def addon_builder(train_fn: Callable) -> Callable:
    """A method's built-in add-on build (methods.base.Addon) from its trainer: `train_fn` with
    the add-on's settings, on the corpus, examples and teacher the caller shares out
    (`specbench prepare`, train.teacher)."""
    def build(engine, tokenizer, data, folder, settings, console, **shared):
        return train_fn(engine, tokenizer, data, folder, console=console,
                        target_name=shared.pop("target_name", "builtin"), **settings, **shared)
    return build
