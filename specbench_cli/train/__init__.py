"""Training what the methods need (Kangaroo adapters, Medusa heads, ...) on a frozen target.

Each trainer lives in its own module (`train/<method>.py`) and is declared beside its method,
as `Method.trainer` (methods/<method>.py): the `specbench train <method>` command and its
options are built from that declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Trainer:
    """`specbench train METHOD`: `function(engine, tokenizer, data, out, *, target_name,
    console, steps, batch_size, max_len, seed, **options)` trains on the frozen target and
    saves into `out`; it returns its final metrics."""
    function: Callable
    what: str                   # what it saves, for messages ("adapter")
    help: str                   # the command's help
    out_help: str
    options: dict               # its own options (Option), beyond those every trainer takes
