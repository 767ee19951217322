"""The tables of the commands that are not a run's report: `list`, `check-sampling` and
`medusa calibrate` (cli.py declares the commands; what they print is here)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..bench.prompts import TEMPLATES
from ..bench.records import SPEED_CONFIGS, SUITE
from .results import SHORT


def print_catalogue(console: Console):
    """`specbench list`: the methods with every option, subtasks, templates, named models, benches."""
    # every method's declarations (torch): `specbench report` prints its tables without them
    from ..methods import METHODS
    from ..models.targets import TARGETS
    table = Table(title="methods (set an option with --opt method.option=value, sweep it with "
                        "--sweep method.option=v1,v2; every method's budget with --budget)")
    for col in ("method", "description", "option", "type", "default", "help"):
        table.add_column(col)
    for name, cls in METHODS.items():
        table.add_row(name, cls.description, *([""] * 4), end_section=not cls.options)
        if cls.budget is not None:       # `run --budget N` sets it
            table.add_row("", "", "[bold]budget[/bold]", "int",
                          str(cls.budget.of(cls.defaults) or "-"),
                          f"tokens verified a step, set by --budget: {cls.budget.how}")
        for i, (key, option) in enumerate(cls.options.items()):
            table.add_row("", "", key, option.type.__name__, str(option.default), option.help,
                          end_section=i == len(cls.options) - 1)
    console.print(table)
    table = Table(title="subtasks (Spec-Bench)")
    table.add_column("subtask")
    table.add_column("categories in question files")
    for sub, cats in SUITE["subtasks"].items():
        table.add_row(sub, ", ".join(cats))
    console.print(table)
    table = Table(title="SPEED-Bench configs (--bench speed_bench:CONFIG or a file of one): each "
                        "category is a subtask, its report column in parentheses")
    table.add_column("config")
    table.add_column("categories = subtasks")
    for config, cats in SPEED_CONFIGS.items():
        table.add_row(config, ", ".join(f"{c} ({SHORT[c]})" for c in cats))
    console.print(table)
    console.print(f"templates: auto (default: the tokenizer's chat template, else vicuna_v1.1), "
                  f"{', '.join(TEMPLATES)}")
    for target in TARGETS.values():
        console.print(f"named models: {target.name}: {target.description} ({target.license}; "
                      "from the package index)")
    console.print("benches: spec_bench (the official 480 questions, downloaded and verified); "
                  "speed_bench:CONFIG (SPEED-Bench's file for CONFIG in "
                  "$SPECBENCH_HOME/speed_bench/CONFIG.parquet or .jsonl, saved there by you); "
                  "or a path to a question file: Spec-Bench's JSONL, or SPEED-Bench's parquet "
                  "or JSONL")


def print_sampling_check(console: Console, results, samples: int, tokens: int,
                         temperature: float, alpha: float):
    """`specbench check-sampling`: one row per method, what the columns mean, a power warning."""
    table = Table(title=f"sampling check · {samples} answers each · first {tokens} tokens · "
                        f"temperature {temperature}")
    for col in ("method", "categories", "χ²", "p-value", "verdict"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        table.add_row(r.method, str(r.categories), f"{r.statistic:.1f}", f"{r.p_value:.3g}",
                      "[green]same distribution[/green]" if r.passed else "[red]differs[/red]")
    console.print(table)
    console.print(f"  [dim]categories: distinct first-{tokens}-token sequences, those expected "
                  f"fewer than 5 times pooled into one; p-value: chi-square test of homogeneity "
                  f"against vanilla's answers; a method fails when p < {alpha} (each test's "
                  f"false-alarm rate for a lossless method)[/dim]")
    weak = [r.method for r in results if r.categories < 10]
    if weak:
        console.print(f"[yellow]only a few categories for {', '.join(weak)}: the test has little "
                      f"power there; raise --temperature or --tokens, or pick a prompt whose "
                      f"answers vary sooner[/yellow]")


def print_medusa_calibration(console: Console, result: dict):
    """`specbench medusa calibrate`: each head's top-1/2/3 accuracy and the trees grown."""
    table = Table(title=f"Medusa head accuracy ({int(result['positions'][0])} positions)")
    table.add_column("head")
    for r in range(3):
        table.add_column(f"top-{r + 1}", justify="right")
    for k, acc in enumerate(result["accuracy"]):
        table.add_row(str(k), *[f"{sum(acc[:r + 1]):.3f}" for r in range(3)])
    console.print(table)
    for budget, tree in result["trees"].items():
        console.print(f"tree budget{budget}: {len(tree) + 1} tokens, depth {max(map(len, tree))}")
