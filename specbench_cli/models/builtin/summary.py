"""What a build reports: quality table, hashes, timings (Rich only, so a reuse stays fast)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# Targets the recipe is tuned to meet (exact-answer rate on held-out questions); misses show red.
EXACT_TARGETS = {"summarization": 0.5, "rag": 0.5, "qa": 0.5}


def print_summary(console: Console, done: dict) -> None:
    """Quality table, hashes and stage timings of a build."""
    quality = done["quality"]
    table = Table(title=f"built-in model quality (held-out answer loss {quality['loss']:.3f}, "
                        f"{done['params'] / 1e6:.2f}M parameters)")
    for column in ("subtask", "questions", "score", "metric", "exact"):
        table.add_column(column, justify="left" if column in ("subtask", "metric") else "right")
    for subtask, row in quality["subtasks"].items():
        target = EXACT_TARGETS.get(subtask)
        style = "red" if target is not None and row["exact"] < target else ""
        table.add_row(subtask, str(row["n"]), f"{row['score']:.2f}", row["metric"],
                      f"[{style}]{row['exact']:.2f}[/]" if style else f"{row['exact']:.2f}")
    console.print(table)
    for name, digest in done["hashes"].items():
        console.print(f"sha256 {name}: {digest}", soft_wrap=True)
    console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in done["timings"].items()), soft_wrap=True)
