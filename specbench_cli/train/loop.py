"""One training loop for every trainable add-on: AdamW, linear warm-up then cosine decay,
gradient clipping, a Rich progress bar, checkpoints to resume from, safetensors output."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas,
                            weight_decay=settings.weight_decay)
    start = 0
    ckpt = out_dir / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        console.print(f"resuming {label} from step {start} ({ckpt})")
    for _ in range(start):       # replay the data order so a resumed run sees the same batches
        next(data)
    metrics: dict = {}
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    module.train()
    step = start
    # Every step's metrics, for curves (`benchmarks/kangaroo_claims.py`); a resumed run goes on
    # from its checkpoint's step.
    log_path = out_dir / TRAINING_LOG
    kept = [line for line in log_path.read_text().splitlines()
            if json.loads(line)["step"] <= start] if log_path.exists() and start else []
    log_path.write_text("".join(line + "\n" for line in kept))
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
                metrics = {"loss": loss.item(), **metrics}
                log.write(json.dumps({"step": step + 1, **metrics}) + "\n")
                progress.update(task, advance=1, info="  ".join(
                    f"{k} {v:.3f}" for k, v in metrics.items()))
                if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                    save_checkpoint(ckpt, module, opt, step + 1)
    except KeyboardInterrupt:
        save_checkpoint(ckpt, module, opt, step)
        console.print(f"interrupted at step {step}; run the same command again to resume")
        raise
    module.eval()
    return metrics


def save_checkpoint(path: Path, module, opt, step: int):
    tmp = path.with_suffix(".tmp")
    torch.save({"module": module.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def finish(out_dir: Path, module: torch.nn.Module, config: dict, weights: str = "model.safetensors"):
    """Write the trained weights (safetensors) and config.json; drop the resume checkpoint."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(out_dir / weights))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / CHECKPOINT).unlink(missing_ok=True)


def addon_builder(train_fn: Callable) -> Callable:
    """A method's built-in add-on build (methods.base.Addon) from its trainer: `train_fn` with
    the add-on's settings, on the corpus, examples and teacher the caller shares out
    (`specbench prepare`, train.teacher)."""
    def build(engine, tokenizer, data, folder, settings, console, **shared):
        return train_fn(engine, tokenizer, data, folder, console=console,
                        target_name=shared.pop("target_name", "builtin"), **settings, **shared)
    return build
