"""Reports of runs: Rich tables (or Markdown, CSV, JSON), summary.json, published rows beside.

A run is either one of ours (`RUN/run.json` + `RUN/answers/<method>.jsonl`) or a folder of
Spec-Bench answer files (`<model-id>.jsonl`, imported as they are), loaded by results.py.
Numbers come from metrics.summarize; this module only arranges them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..bench.records import in_column_order
from ..errors import SpecbenchError
from .budgets import budget_curves, budget_notes
from .costmodel import LARGEST_BATCH, predict, predict_batches
from .endpoints import is_endpoint_run, render_endpoints
from .metrics import MetricsError
from .results import SHORT, Run, caption, describe_missing, fmt, format_overhead, load_by_device, \
    missing

FORMATS = ("table", "markdown", "csv", "json")


# ---------------------------------------------------------------- numbers into frames

def run_rows(run: Run) -> list[dict]:
    """One row a method, unrounded numbers (CSV and JSON export these as they are)."""
    rows, target = [], run.meta.get("model_parameters")
    for name, m in run.summary["methods"].items():
        overhead = run.meta.get("methods", {}).get(name, {}).get("overhead")
        eq, paired = m["equal_to_vanilla"], m["paired_speedup"]
        rows.append({
            "run": run.label, "published": False, "method": name,
            **{SHORT.get(s, s): m["speedup"][s] for s in run.summary["subtasks"]},
            "overall": m["speedup_overall"], "std": m["speedup_std"],
            "paired": paired["mean"],
            "ci_low": paired["ci95"][0] if paired["ci95"] else None,
            "ci_high": paired["ci95"][1] if paired["ci95"] else None,
            "MAT": m["mean_accepted_overall"], "tok/s": m["tokens_per_s"],
            "B": m.get("batch_size", 1), "agg tok/s": m.get("aggregate_tokens_per_s"),
            "overhead": format_overhead(overhead, target),
            "params": (overhead or {}).get("params"), "bytes": (overhead or {}).get("bytes"),
            "equal": eq["share"], "first_diff": eq["first_diff"],
            "lossless": run.meta.get("methods", {}).get(name, {}).get("lossless", True),
            "near_tie": eq.get("near_tie"), "mismatch": eq.get("mismatch"),
            "dtype": run.meta.get("config", {}).get("dtype"),
            "questions": m["questions"], "repeats": m["repeats"]})
    return rows


def baseline_rows(doc: dict) -> list[dict]:
    """Rows from a baseline or published-numbers file (baselines/: see compare.load_baseline)."""
    rows, target = [], doc.get("target_parameters")
    for name, m in doc["methods"].items():
        overhead = m.get("overhead")
        rows.append({
            "run": doc.get("name", "baseline"), "published": doc.get("kind") == "published",
            "method": name,
            **{SHORT.get(s, s): v for s, v in (m.get("speedup") or {}).items()},
            "overall": m.get("speedup_overall"), "MAT": m.get("mean_accepted_overall"),
            "overhead": format_overhead(overhead, target) if overhead else "",
            "params": (overhead or {}).get("params"), "bytes": (overhead or {}).get("bytes"),
            "equal": m.get("equal_to_vanilla")})
    return rows


def leaderboard(runs: list[Run], published: list[dict] = ()) -> pd.DataFrame:
    """Methods × (subtask speedups, overall, spread, MAT, tok/s, overhead, equality), runs
    stacked in order, published rows after them."""
    rows = [r for run in runs for r in run_rows(run)] + [r for doc in published
                                                          for r in baseline_rows(doc)]
    # A column for each subtask a run measured, in its suite's order (a published row's other
    # subtasks have nothing to stand beside).
    subtasks = in_column_order({s for run in runs for s in run.summary["subtasks"]})
    columns = (["run", "published", "method"] + [SHORT.get(s, s) for s in subtasks]
               + ["overall", "std", "paired", "ci_low", "ci_high", "MAT", "tok/s", "B",
                  "agg tok/s", "overhead",
                  "params", "bytes", "equal", "first_diff", "lossless", "near_tie", "mismatch",
                  "dtype", "questions", "repeats"])
    # dtype object: ints stay ints beside None (question ids, parameter counts).
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame.where(frame.notna(), None)     # NaN → None: JSON null, '–' in tables


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the strings people read: 1.52x, 1.52 ± 0.03, 1.48 [1.32, 1.66], 100%."""
    subtasks = [c for c in frame.columns if c in SHORT.values()]
    out = pd.DataFrame({
        "run": [f"{r} (published)" if p else r for r, p in zip(frame["run"], frame["published"])],
        "method": frame["method"]})
    for col in subtasks + ["overall"]:
        out[col] = frame[col].map(lambda x: fmt(x, ".2f", "x"))
    if frame["std"].notna().any():
        out["± std"] = frame["std"].map(lambda x: "" if missing(x) else f"± {x:.2f}")
    if frame["ci_low"].notna().any():
        out["paired [95% CI]"] = [
            "–" if missing(lo) else f"{p:.2f} [{lo:.2f}, {hi:.2f}]"
            for p, lo, hi in zip(frame["paired"], frame["ci_low"], frame["ci_high"])]
    out["MAT"] = frame["MAT"].map(fmt)
    out["tok/s"] = frame["tok/s"].map(lambda x: fmt(x, ".1f"))
    if frame["B"].fillna(1).gt(1).any():      # a --batch-size run: per sequence and together
        out["B"] = frame["B"].map(lambda x: fmt(x, "d"))
        out["agg tok/s"] = frame["agg tok/s"].map(lambda x: fmt(x, ".1f"))
    out["overhead"] = frame["overhead"]
    out["equal"] = [equal_text(share, diff, pub) + (" · lossy" if lossless is False else "")
                    for share, diff, pub, lossless in zip(frame["equal"], frame["first_diff"],
                                                          frame["published"], frame["lossless"])]
    # Half precision, or any answer that differs: equal / near-tie / mismatch, side by side.
    differs = (frame["near_tie"].fillna(0) + frame["mismatch"].fillna(0) > 0).any()
    if differs or frame["dtype"].isin(["fp16", "bf16"]).any():
        out["near-tie"] = frame["near_tie"].map(lambda x: fmt(x, ".0%"))
        out["mismatch"] = frame["mismatch"].map(lambda x: fmt(x, ".0%"))
    # A published table leaves out what it did not report; '–' would read as "measured, none".
    published = frame["published"].astype(bool).to_numpy()
    out.loc[published] = out.loc[published].replace("–", "")
    return out


def equal_text(share, first_diff, published: bool) -> str:
    if missing(share):
        return "" if published else "n/a"      # no token ids (imported answers): cannot check
    text = f"{100 * share:.0f}%"
    return text + (f" (first diff q{first_diff})" if not missing(first_diff) else "")


# ---------------------------------------------------------------- output

def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub table; numbers right-aligned (no tabulate dependency)."""
    header = list(frame.columns)
    align = ["---" if c in ("run", "method") else "---:" for c in header]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def render_table(frame: pd.DataFrame, published_flags, title: str, captions: list[str]) -> Table:
    table = Table(title=title, caption="\n".join(captions), show_lines=False)
    for col in frame.columns:
        table.add_column(col, justify="left" if col in ("run", "method") else "right",
                         style="bold" if col == "method" else None,
                         no_wrap=col != "equal")
    for row, published in zip(frame.itertuples(index=False), published_flags):
        table.add_row(*(escape(str(v)) for v in row), style="dim italic" if published else None)
    return table


def render_details(summary: dict, title: str = "acceptance details") -> Table:
    """Acceptance details: CTAR(1..4) and steps for every method, the mean draft length, and a
    column per statistic some method declares (blank where a method declares none)."""
    labels = list(dict.fromkeys(s["label"] for m in summary["methods"].values()
                                for s in m["statistics"]))
    table = Table(title=title)
    table.add_column("method", style="bold", no_wrap=True)
    for col in ["CTAR(1)", "CTAR(2)", "CTAR(3)", "CTAR(4)", "steps", "draft len"] + labels:
        table.add_column(escape(col), justify="right", no_wrap=True)
    for name, m in summary["methods"].items():
        values = {s["label"]: statistic_text(s) for s in m["statistics"]}
        table.add_row(name, *[fmt(m["ctar"][str(w)]) for w in range(1, 5)], str(m["steps"]),
                      fmt(m["stats"].get("mean_draft_length")),
                      *[values.get(label, "") for label in labels])
    return table


def statistic_text(statistic: dict) -> str:
    """Shares as whole percents (62%), anything else to three decimals (0.125 for ms)."""
    if statistic["unit"] == "%":
        return fmt(statistic["value"], ".0f", "%")
    return fmt(statistic["value"], ".3f")


def published_caption(doc: dict) -> str:
    source = doc.get("source") or {}
    where = source.get("url", "") if isinstance(source, dict) else str(source)
    return (f"{doc.get('name')} * published: {doc.get('model', '?')} on {doc.get('machine', '?')}"
            f" · {doc.get('settings', '')} · {where}")


PROFILE_FILE = "profile.json"


def add_cost_model(run: Run, profile_file: Path | None = None) -> None:
    """Predicted speedups (costmodel.py) from a profile of the same model and device: the
    given file, else the one `run --breakdown` wrote into the run."""
    path = profile_file or run.path / PROFILE_FILE
    infos = {name: m.get("info") or {} for name, m in run.meta.get("methods", {}).items()}
    batched = any(m.get("batch_size", 1) > 1 for m in run.summary["methods"].values())
    if not Path(path).is_file():
        if batched:
            run.summary["batches"] = predict_batches(run.summary, None, infos=infos)
        return
    try:
        profile = json.loads(Path(path).read_text())
        run.summary["cost_model"] = predict(run.summary, profile, infos=infos)
        if batched:
            run.summary["batches"] = predict_batches(run.summary, profile, infos=infos)
    except (ValueError, KeyError, TypeError) as err:
        raise MetricsError(f"{path}: not a profile.json of `specbench profile` ({err})") from None
    run.summary["cost_model_profile"] = {"file": str(path), "model": profile.get("model"),
                                         "device": profile.get("device"),
                                         "contexts": profile.get("contexts"),
                                         "largest_block": max(profile.get("sizes") or [0]),
                                         "joined": list(profile.get("batch_latency_seconds")
                                                        or {})}


def report_runs(run_dirs: list[Path], console: Console | None = None, fmt_: str = "table",
                published: list[dict] = (), plots: bool = False,
                baseline_name: str | None = None, err_console: Console | None = None,
                profile: Path | None = None, counting: str = "ids",
                tokenizer: Path | None = None) -> list[dict]:
    """Print the runs side by side (and published rows); write each run's summary.json (and
    plots); return the summaries. `profile`: a profile.json for the cost model's predictions;
    `counting`, `tokenizer`: how the baseline's tokens are counted (results.load_summarized).
    A sharded run whose workers had different devices is shown device by device."""
    if fmt_ not in FORMATS:
        raise SpecbenchError(f"--format {fmt_!r}: choose one of {', '.join(FORMATS)}")
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    runs = [run for d in run_dirs
            for run in load_by_device(d, baseline_name, counting, tokenizer)]
    for run in runs:
        add_cost_model(run, profile)
        curves = budget_curves(run.summary, run.meta)
        if curves:
            run.summary["budgets"] = curves
        (run.path / f"summary{run.suffix}.json").write_text(json.dumps(run.summary, indent=2))
        if run.summary["missing"]:
            # Not fatal: a run still in progress is worth a look. Speedups pair questions.
            err_console.print(f"[yellow]warning:[/yellow] {run.path}: methods answered different "
                              f"questions: {describe_missing(run.summary)}",
                              highlight=False, soft_wrap=True)
    if plots:       # files first: a reader that stops early (| head) must not cost the plots
        from .plots import write_plots     # matplotlib: ~1 s to import, only for --plots
        for run in runs:
            files = write_plots(run)
            # stderr, so that csv/json on stdout stay machine-readable
            err_console.print(f"plots: {len(files)} files in {run.path / ('plots' + run.suffix)}",
                              highlight=False)
    frame = leaderboard(runs, published)
    if fmt_ == "csv":
        console.out(frame.to_csv(index=False).rstrip("\n"), highlight=False)
    elif fmt_ == "json":
        console.out(frame.to_json(orient="records", indent=2), highlight=False)
    else:
        shown = display(frame)
        if len(runs) == 1 and not published:
            shown = shown.drop(columns=["run"])
        if fmt_ == "markdown":
            console.out(to_markdown(shown), highlight=False)
        else:
            print_tables(console, runs, published, shown, frame["published"])
    return [run.summary for run in runs]


def print_tables(console: Console, runs: list[Run], published: list[dict], shown: pd.DataFrame,
                 published_flags) -> None:
    captions = [(f"{run.label}: " if len(runs) > 1 else "") + caption(run.meta) for run in runs]
    captions += [published_caption(doc) for doc in published]
    title = "specbench · " + " | ".join(run.label for run in runs)
    if "run" in shown.columns:      # a narrow mark keeps the table within 160 columns
        shown = shown.assign(run=shown["run"].str.replace(" (published)", " *", regex=False))
    console.print(render_table(shown, published_flags, title, captions))
    for run in runs:
        label = f" · {run.label}" if len(runs) > 1 else ""
        if is_endpoint_run(run.summary):
            console.print(render_endpoints(run.summary, "endpoint details" + label))
        else:
            console.print(render_details(run.summary, "acceptance details" + label))
        if any(m.get("breakdown") for m in run.summary["methods"].values()) \
                or run.summary.get("cost_model"):
            console.print(render_time(run.summary, "where the time goes" + label))
            for line in time_notes(run.summary):
                console.print(f"  [dim]{escape(line)}[/dim]")
        if run.summary.get("batches"):
            console.print(render_batches(run.summary, "speedup against batch size" + label))
            for line in batch_notes(run.summary):
                console.print(f"  [dim]{escape(line)}[/dim]")
        if run.summary.get("budgets"):
            console.print(render_budgets(run.summary["budgets"], "speedup against budget" + label))
            for line in budget_notes(run.summary["budgets"]):
                console.print(f"  [dim]{escape(line)}[/dim]")
    long_name = {v: k for k, v in SHORT.items()}
    console.print("  [dim]columns: " + ", ".join(f"{c} = {long_name[c]}" for c in shown.columns
                                               if c in long_name) + "[/dim]")
    # Every run's definitions once: runs may declare different method statistics.
    for line in dict.fromkeys(line for run in runs for line in run.summary["definitions"]):
        console.print(f"  [dim]{escape(line)}[/dim]")
    targets = {run.meta.get("model_parameters") for run in runs}
    count = f"{fmt(targets.pop(), ',')} " if len(targets) == 1 else ""
    console.print("  [dim]overhead: extra trainable parameters (and % of the target's "
                  f"{count}parameters) or storage; equal n/a: no token ids to compare (imported "
                  "answers) or a sampled run (temperature > 0: answers differ by design; "
                  "`specbench check-sampling` tests that each method keeps the target's "
                  "distribution)[/dim]")


def render_time(summary: dict, title: str) -> Table:
    """ms per committed token by phase (runs with --breakdown), the mean verified block, and
    the cost model's predicted speedup beside the measured one (with a profile)."""
    model = summary.get("cost_model", {})
    table = Table(title=title)
    table.add_column("method", style="bold", no_wrap=True)
    for col in ("prefill", "draft", "verify", "rest", "total ms/tok", "block", "c(block)",
                "c*(block)", "predicted", "pooled", "measured"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, m in summary["methods"].items():
        per_token = (m.get("breakdown") or {}).get("ms_per_token") or {}
        phases = [fmt(per_token.get(p), ".3f") for p in ("prefill", "draft", "verify", "rest")]
        total = fmt(sum(per_token.values()), ".3f") if per_token else "–"
        pred = model.get(name, {})
        table.add_row(name, *phases, total, fmt(m.get("mean_verified")),
                      fmt(pred.get("verify_cost")), fmt(pred.get("roofline_cost")),
                      fmt(pred.get("predicted"), ".2f", "x"),
                      fmt(pred.get("measured_pooled"), ".2f", "x"),
                      fmt(m.get("speedup_overall"), ".2f", "x"))
    return table


def time_notes(summary: dict) -> list[str]:
    notes = ["ms/tok: wall ms per committed token by phase, device synchronized around each "
             "(prefill: the prompt's forward; draft: drafter forwards, lookups, retrieval, tree "
             "building; verify: target forwards; rest: acceptance, cache moves, Python); "
             "block: mean tokens a target forward verified"]
    model, source = summary.get("cost_model"), summary.get("cost_model_profile")
    if model:
        notes.append(f"c(block): a verification forward's latency over a one-token forward's, "
                     f"averaged over the run's block sizes, from {source['file']} "
                     f"({source['model']} on {source['device']}, context "
                     f"{source['contexts'][0]}); c*(block): the same mean of the device's "
                     "roofline c*(n) = max(t1, n × FLOP per token / product rate) / t1 (`specbench "
                     "profile`), what verifying would cost at the device's limit; predicted: "
                     "vanilla's time per token over the "
                     "method's, π + (c(block) + δ + ρ) / MAT in one-token steps (π prefill per "
                     "token, δ draft and ρ rest per step: 0 without --breakdown); pooled: "
                     "measured vanilla ms/token over the method's (what is predicted); measured: "
                     "Spec-Bench's speedup (mean of per-question throughputs)")
        notes += [f"{name}: {p['why']}" for name, p in model.items()
                  if name != summary.get("baseline", "vanilla")]
    return notes


def render_batches(summary: dict, title: str) -> Table:
    """Per method: speedup over vanilla at each batch size run (measured, and predicted with a
    profile), aggregate tokens/s, and the batch size where the gain ends."""
    batches = summary["batches"]
    sizes = sorted({b for curve in batches.values() for b in curve["sizes"]})
    table = Table(title=title)
    table.add_column("method", style="bold", no_wrap=True)
    for b in sizes:
        table.add_column(f"B={b}", justify="right", no_wrap=True)
    for col in ("break-even B: measured", "predicted"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, curve in batches.items():
        cells = []
        for b in sizes:
            measured, predicted = curve["measured"].get(str(b)), curve["predicted"].get(str(b))
            cells.append("–" if measured is None else fmt(measured, ".2f", "x")
                         + ("" if predicted is None else f" ({predicted:.2f})"))
        table.add_row(name, *cells, break_even_text(curve["break_even_measured"],
                                                    curve["largest_measured"]),
                      break_even_text(curve["break_even_predicted"], LARGEST_BATCH,
                                      curve["predicted"].get("1") is None))
    return table


def render_budgets(curves: dict, title: str) -> Table:
    """Per method (and batch size): the speedup of each budget run, its own size and the fitted
    one with the budget they came to in brackets."""
    fixed = sorted({int(k) for c in curves.values() for k in c["rows"]
                    if k not in ("default", "auto")})
    labels = ["default", *map(str, fixed), "auto"]
    table = Table(title=title)
    table.add_column("method", style="bold", no_wrap=True)
    for label in labels:
        table.add_column(label if label in ("default", "auto") else f"budget {label}",
                         justify="right", no_wrap=True)
    for group, curve in curves.items():
        cells = []
        for label in labels:
            row = curve["rows"].get(label)
            text = "–" if row is None else fmt(row["speedup"], ".2f", "x")
            if row is not None and label in ("default", "auto"):
                text += f" ({row['budget'] if row['budget'] is not None else '?'})"
            cells.append(f"[bold]{text}[/bold]" if label == curve["best_fixed"] else text)
        table.add_row(group, *cells)
    return table


def break_even_text(value, largest: int, unknown: bool = False) -> str:
    if unknown:
        return "–"
    if value is None:
        return f"> {largest}"
    return "never gains" if value == 0 else f"{value:.1f}"


def batch_notes(summary: dict) -> list[str]:
    notes = ["B=n: speedup over vanilla at the same batch size (Spec-Bench definition, per "
             "sequence); in brackets the cost model's prediction, vanilla's time per token "
             "π + (c_B(1) + B·ρ) / B over the method's π + (c_B(block) + B·(δ+ρ)) / (B·MAT), "
             "c_B(n) the latency of a joined forward of B sequences with n tokens each over a "
             "one-token forward's, from the run's profile (c(B·n) where it has no joined "
             "timings); π prefill per token, δ drafting and ρ the rest per step, at batch 1 in "
             "one-token steps (0 without --breakdown). Break-even B: where the speedup last "
             f"falls below 1, measured (interpolated in log2 B between the sizes run) and "
             f"predicted (over 1..{LARGEST_BATCH})."]
    source = summary.get("cost_model_profile")
    if source:
        joined = ", ".join(source.get("joined") or []) or "none"
        notes.append(f"profile {source['file']}: joined forwards timed at batch sizes "
                     f"{joined}; latencies linear in the block past the {source['largest_block']} "
                     "tokens measured")
    return notes


def report(run_dir: Path, console: Console | None = None, **options) -> dict:
    """One run's report (what `specbench run` prints at its end); returns its summary."""
    return report_runs([run_dir], console, **options)[0]


def print_profile(console: Console, result: dict, out: Path):
    """`specbench profile`'s table and notes."""
    note = profile_caption(result, Path(result["model"].rstrip("/")).name)
    console.print(profile_table(result, note))
    for line in profile_notes(result):
        console.print(f"  {line}", highlight=False)
    console.print(f"written: {out}/profile.json, profile.png, profile.svg", highlight=False)


def profile_notes(result: dict) -> list[str]:
    bw = result["bandwidth"]
    lines = [
        f"weights read per step: {result['weight_bytes'] / 2**20:.1f} MiB; streaming read "
        f"bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['how']}"
        + (f"; median of {bw['rounds']} rounds, {bw['range'][0] / 1e9:.1f}–"
           f"{bw['range'][1] / 1e9:.1f}" if "range" in bw else "") + ")",
        f"memory floor of a step = bytes / bandwidth = {1e3 * result['floor_seconds']:.2f} ms; "
        f"a one-token step achieves {100 * result['achieved_bandwidth_share']:.0f}% of the "
        "bandwidth" + (" (the median of the rounds' shares, each round a probe pass and a "
                       "one-token step in turn)" if "range" in bw else ""),
        f"matrix products at {max(result['sizes'])} tokens: "
        f"{result['flops_per_second_at_widest'] / 1e9:.1f} GFLOP/s",
        f"ms: median of {result['repeats']} forwards (device synchronized); ×: relative to one "
        "token at the same context"]
    if "product_rate" in result:
        rate = result["product_rate"]
        lines.append(
            f"roofline ×: c*(n) = max(t1, n × {result['flops_per_token'] / 1e9:.3f} GFLOP per "
            f"token / {rate['flops_per_s'] / 1e9:.0f} GFLOP/s) / t1, the device's product rate "
            f"({rate['how']}) with the weights read once; ÷roof: measured × over roofline × "
            "(1.00: the block costs what the device allows)")
    if result.get("dtype_choice"):
        lines.append(f"dtype: {result['dtype']} ({result['dtype_choice']})")
    if result.get("kernels"):
        lines.append("how the step runs: matrix-product kernels by block size (rows:kernel), the "
                     "decoder layers, the weights' layout; chosen by timing the candidates over "
                     "the model's own weights, cached in $SPECBENCH_HOME/kernels:")
        lines += [f"  {shape:<22} {choice}" for shape, choice in result["kernels"].items()]
    return lines


def profile_table(result: dict, note: str) -> Table:
    table = Table(title=f"forward latency by tokens in the block · {note}")
    table.add_column("tokens", justify="right")
    roof = result.get("roofline_cost", {})     # profiles written before it have none
    for c in result["contexts"]:
        table.add_column(f"ctx {c} ms", justify="right")
        table.add_column("×", justify="right")
        if str(c) in roof:
            table.add_column("roofline ×", justify="right")
            table.add_column("÷roof", justify="right")
    for n in result["sizes"]:
        cells = [str(n)]
        for c in result["contexts"]:
            lat = result["latency_seconds"][str(c)]
            cost = lat[str(n)] / lat["1"]
            cells += [f"{1e3 * lat[str(n)]:.2f}", f"{cost:.2f}"]
            if str(c) in roof:
                cells += [f"{roof[str(c)][str(n)]:.2f}", f"{cost / roof[str(c)][str(n)]:.2f}"]
        table.add_row(*cells)
    return table


def profile_caption(result: dict, name: str) -> str:
    env = result["environment"]
    return (f"{name} · {result['dtype']} on {result['device']} "
            f"({env['gpu'] or env['cpu']}, {env['torch_threads']} threads)")
