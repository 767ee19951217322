"""`specbench train METHOD` as a command, built from the method's `Trainer` declaration: the
options every trainer takes, `--out`, then the trainer's own (typer reads the built signature
as it reads a written one). The CLI builds it only when `train` is invoked."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from .. import api
from ..terminal import console, user_errors
from . import Trainer

# Options every trainer takes; each trainer's own come from its declaration.
COMMON = {
    "model": (str, typer.Option(..., help="Target model folder, hub id, .gguf file or named "
                                "target.")),
    "data": (list[Path], typer.Option(..., help="Conversations: ShareGPT JSON/JSONL, "
                                      "role/content messages, or the built-in train.jsonl. "
                                      "Repeatable.")),
    "steps": (int, typer.Option(2000, help="Optimizer steps.")),
    "batch_size": (int, typer.Option(8, help="Conversations per step.")),
    "max_len": (int, typer.Option(512, help="Tokens kept per conversation.")),
    "seed": (int, typer.Option(0)),
    "checkpoint_every": (int, typer.Option(100, help="Steps between the checkpoints an "
                                           "interrupted run resumes from (OUT/checkpoint.pt).")),
    "template": (str, typer.Option("auto", help="How conversations are laid out, as `run` "
                                   "lays out prompts: vicuna_v1.1, chat or auto (the same "
                                   "choice `run --template auto` makes for this model).")),
    "dtype": (str, typer.Option("fp32", help="Target dtype during training.")),
    "device": (Optional[str], typer.Option(None)),
}


def train_command(name: str, trainer: Trainer):
    """The click command that calls `api.train(name, ...)` with what was typed."""
    def command(**values):
        with user_errors():
            metrics = api.train(name, console=console, **values)
            console.print(f"{trainer.what} saved to {values['out']} (final: " + ", ".join(
                f"{k} {v:.3f}" for k, v in metrics.items()) + ")")

    def parameter(key, annotation, default):
        return inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=annotation)
    params = [parameter(key, kind, option) for key, (kind, option) in COMMON.items()]
    params.append(parameter("out", Path, typer.Option(..., help=trainer.out_help)))
    params += [parameter(key, Optional[o.type] if o.default is None else o.type,
                         typer.Option(o.default, help=o.help))
               for key, o in trainer.options.items()]
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = trainer.help
    one = typer.Typer()
    one.command(name)(command)
    return typer.main.get_command(one)
