"""Rich tables and summary.json for a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .metrics import MetricsError, load_answers, summarize
from .runner import ANSWERS_DIR


def load_run(run_dir: Path) -> tuple[dict, dict[str, list[dict]]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f"run directory {run_dir} does not exist")
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    files = sorted((run_dir / ANSWERS_DIR).glob("*.jsonl"))
    answers = {f.stem: load_answers(f) for f in files}
    answers = {k: v for k, v in answers.items() if v}
    if not answers:
        raise MetricsError(f"{run_dir}: no answers yet (empty run)")
    # Keep the run's own method order (vanilla first).
    order = meta.get("config", {}).get("methods", [])
    return meta, dict(sorted(answers.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_overhead(overhead: dict | None, target_params: int | None) -> str:
    if not overhead:
        return "?"
    if overhead.get("params"):
        share = f" ({100 * overhead['params'] / target_params:.2f}%)" if target_params else ""
        return f"{overhead['params'] / 1e6:.2f}M{share}"
    if overhead.get("bytes"):
        return human_bytes(overhead["bytes"])
    return "0"


def fmt(x, spec=".2f", suffix="") -> str:
    return "–" if x is None or x != x else f"{x:{spec}}{suffix}"


def caption(meta: dict) -> str:
    cfg, env = meta.get("config", {}), meta.get("environment", {})
    device = env.get("gpu") or env.get("cpu") or "?"
    return (f"model {cfg.get('model', '?')} · {cfg.get('dtype', '?')} on {cfg.get('device', '?')} "
            f"({device}, {env.get('torch_threads', '?')} threads) · bench {cfg.get('bench', '?')} · "
            f"max_new_tokens {cfg.get('max_new_tokens', '?')} · repeats {cfg.get('repeats', '?')}")


# The leaderboard's column names.
SHORT = {"mt_bench": "MT", "translation": "Trans", "summarization": "Sum", "qa": "QA",
         "math_reasoning": "Math", "rag": "RAG"}


def render_table(meta: dict, summary: dict, title: str) -> Table:
    subtasks = summary["subtasks"]
    table = Table(title=title, caption=caption(meta), show_lines=False)
    table.add_column("method", style="bold", no_wrap=True)
    for col in [SHORT.get(s, s) for s in subtasks] + ["overall", "MAT", "tok/s", "overhead"]:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("equal", justify="right")
    target = meta.get("model_parameters")
    for name, m in summary["methods"].items():
        eq = m["equal_to_vanilla"]
        equal = "–" if eq["share"] is None else f"{100 * eq['share']:.0f}%"
        if eq["first_diff"] is not None:
            equal += f" (first diff q{eq['first_diff']})"
        overhead = meta.get("methods", {}).get(name, {}).get("overhead")
        table.add_row(name, *[fmt(m["speedup"][s], ".2f", "x") for s in subtasks],
                      fmt(m["speedup_overall"], ".2f", "x"), fmt(m["mean_accepted_overall"]),
                      fmt(m["tokens_per_s"], ".1f"), format_overhead(overhead, target), equal)
    return table


def render_details(summary: dict) -> Table:
    """Acceptance details: CTAR(1..4) for every method, drafting counters where a method has them."""
    table = Table(title="acceptance details")
    table.add_column("method", style="bold", no_wrap=True)
    for col in ("CTAR(1)", "CTAR(2)", "CTAR(3)", "CTAR(4)", "steps", "draft len", "η-stop",
                "hit rate", "retr ms"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, m in summary["methods"].items():
        stats = m["stats"]
        stop = stats.get("stopped_by_threshold_share")
        hits = stats.get("hit_rate")
        table.add_row(name, *[fmt(m["ctar"][str(w)]) for w in range(1, 5)], str(m["steps"]),
                      fmt(stats.get("mean_draft_length")),
                      "–" if stop is None else f"{100 * stop:.0f}%",
                      "–" if hits is None else f"{100 * hits:.0f}%",
                      fmt(stats.get("retrieval_ms_per_step"), ".3f"))
    return table


def report(run_dir: Path, console: Console | None = None) -> dict:
    """Print the run's table and definitions; write summary.json; return the summary."""
    console = console or Console()
    meta, answers = load_run(run_dir)
    summary = summarize(answers)
    summary["run"] = str(run_dir)
    summary["device"] = meta.get("environment", {})
    summary["overhead"] = {k: v.get("overhead") for k, v in meta.get("methods", {}).items()}
    summary["target_parameters"] = meta.get("model_parameters")
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(render_table(meta, summary, f"specbench · {Path(run_dir).name}"))
    console.print(render_details(summary))
    console.print("  [dim]columns: " + ", ".join(f"{SHORT[s]} = {s}" for s in summary["subtasks"]
                                               if s in SHORT) + "[/dim]")
    for line in summary["definitions"]:
        console.print(f"  [dim]{line}[/dim]")
    console.print("  [dim]overhead: extra trainable parameters (and % of the target's "
                  f"{fmt(meta.get('model_parameters'), ',')} parameters) or storage[/dim]")
    return summary
