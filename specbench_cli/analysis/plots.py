"""A run's figures, PNG and SVG under RUN/plots/.

Matplotlib's object API (Figure without pyplot) draws with the Agg renderer and touches no
global backend state, so plotting works on machines without a display and inside tests.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..names import batch_size_of, unbatched
from .results import SHORT, Run, caption, format_overhead, missing

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
          "#8C8C8C", "#CCB974", "#64B5CD"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def methods_of(run: Run) -> list[str]:
    """Every method but the baseline: its speedup is 1 and its accept lengths all 1."""
    return [m for m in run.summary["methods"] if m != run.summary.get("baseline", "vanilla")]


def color(run: Run, method: str) -> str:
    return COLORS[list(run.summary["methods"]).index(method) % len(COLORS)]


def new_figure(size=(10, 5.2)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    return fig


def speedup_by_subtask(run: Run) -> Figure:
    """Grouped bars: subtasks (and overall) on x, one bar a method."""
    fig = new_figure()
    ax = fig.add_subplot()
    subtasks = run.summary["subtasks"]
    groups = [SHORT.get(s, s) for s in subtasks] + ["overall"]
    methods = methods_of(run)
    width = 0.8 / max(len(methods), 1)
    for i, name in enumerate(methods):
        m = run.summary["methods"][name]
        values = [m["speedup"][s] for s in subtasks] + [m["speedup_overall"]]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [0 if missing(v) else v for v in values], width * 0.92, label=name,
               color=color(run, name))
        if m["speedup_std"]:        # spread over repeats, known for the overall number only
            ax.errorbar(xs[-1], m["speedup_overall"], yerr=m["speedup_std"], color="black",
                        capsize=3, lw=0.9)
    ax.axhline(1.0, color="black", lw=0.9, ls="--", label=f"{run.summary['baseline']} (1.00×)")
    ax.axvline(len(subtasks) - 0.5, color="#bbbbbb", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(f"speedup over {run.summary['baseline']} (×, tokens/s ratio)")
    ax.set_xlabel("subtask")
    ax.set_title("Speedup per subtask and method (Spec-Bench definition; overall bar: ± std over "
                 "repeats)" if any(run.summary["methods"][m]["speedup_std"] for m in methods)
                 else "Speedup per subtask and method (Spec-Bench definition)")
    ax.legend(ncols=min(len(methods) + 1, 6), loc="upper center", bbox_to_anchor=(0.5, -0.13),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def speedup_vs_accepted(run: Run) -> Figure:
    """One point a method and subtask: how much of the acceptance becomes speed."""
    fig = new_figure((9, 6))
    ax = fig.add_subplot()
    subtasks = run.summary["subtasks"]
    top = 1.0
    for name in methods_of(run):
        m = run.summary["methods"][name]
        for j, s in enumerate(subtasks):
            x, y = m["mean_accepted"][s], m["speedup"][s]
            if missing(x) or missing(y):
                continue
            top = max(top, x, y)
            ax.scatter(x, y, color=color(run, name), marker=MARKERS[j % len(MARKERS)], s=55,
                       edgecolor="white", linewidth=0.6, zorder=3)
    ax.plot([1, top * 1.05], [1, top * 1.05], color="#999999", ls=":", lw=1)
    ax.axhline(1.0, color="black", lw=0.9, ls="--")
    ax.set_xlabel("mean accepted tokens per target forward (tokens/step)")
    ax.set_ylabel(f"speedup over {run.summary['baseline']} (×)")
    ax.set_title("Speedup vs mean accepted tokens (one point per method and subtask)")
    method_keys = [Line2D([], [], color=color(run, n), marker="o", ls="", label=n)
                   for n in methods_of(run)]
    subtask_keys = [Line2D([], [], color="#555555", marker=MARKERS[j % len(MARKERS)], ls="",
                           label=SHORT.get(s, s)) for j, s in enumerate(subtasks)]
    guides = [Line2D([], [], color="#999999", ls=":", label="speedup = MAT\n(drafting for free)"),
              Line2D([], [], color="black", ls="--", label="no speedup")]
    # One legend outside the axes (points may land anywhere), with a bold header a section.
    header = [Line2D([], [], ls="", label="method")], [Line2D([], [], ls="", label="subtask")]
    handles = header[0] + method_keys + header[1] + subtask_keys + guides
    legend = fig.legend(handles=handles, loc="outside right upper", frameon=False)
    for text in legend.get_texts():
        if text.get_text() in ("method", "subtask"):
            text.set_fontweight("bold")
    ax.grid(alpha=0.3)
    return fig


def accept_lengths(run: Run) -> Figure:
    """Share of target forwards by tokens committed, one panel a method."""
    methods = methods_of(run)
    cols = min(3, max(len(methods), 1))
    rows = -(-max(len(methods), 1) // cols)
    fig = new_figure((4 * cols, 2.8 * rows + 0.6))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    counts = {n: Counter(a for r in run.answers[n] for a in r["choices"][0]["accept_lengths"])
              for n in methods}
    longest = max([max(c) for c in counts.values() if c] or [1])
    for ax, name in zip(axes, methods):
        total = sum(counts[name].values()) or 1
        lengths = range(1, longest + 1)
        ax.bar(lengths, [100 * counts[name][k] / total for k in lengths], color=color(run, name),
               width=0.8)
        mat = run.summary["methods"][name]["mean_accepted_overall"]
        if not missing(mat):
            ax.axvline(mat, color="black", lw=0.9, ls="--")
        ax.set_title(f"{name}: MAT {fmt_num(mat)}, {total:,} steps", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("share of steps (%)")
    for i, ax in enumerate(axes[:len(methods)]):
        if i + cols >= len(methods):      # lowest panel of its column
            ax.set_xlabel("tokens committed per target forward")
            ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle("Accept lengths per method (bonus token included; dashed: mean)")
    return fig


def fmt_num(x) -> str:
    return "–" if missing(x) else f"{x:.2f}"


def overhead_vs_speedup(run: Run) -> Figure:
    """What a method costs in extra parameters against what it gains."""
    fig = new_figure((9, 5.5))
    ax = fig.add_subplot()
    target = run.meta.get("model_parameters")
    points = []
    for name in methods_of(run):
        m = run.summary["methods"][name]
        overhead = run.meta.get("methods", {}).get(name, {}).get("overhead") or {}
        params = overhead.get("params") or 0
        x = 100 * params / target if target else params / 1e6
        if not missing(m["speedup_overall"]):
            points.append((name, overhead, x, m["speedup_overall"], m["speedup_std"] or 0))
    right = max([x for _, _, x, _, _ in points] or [0])
    for name, overhead, x, y, std in points:
        ax.errorbar(x, y, yerr=std, fmt="o", color=color(run, name), ms=8, capsize=3, zorder=3)
        # Labels of the rightmost points go to their left, inside the axes.
        left = right > 0 and x > 0.6 * right
        ax.annotate(f"{name}: {overhead_label(overhead, target)}", (x, y),
                    textcoords="offset points", xytext=(-7 if left else 7, 5),
                    ha="right" if left else "left", fontsize=9)
    ax.axhline(1.0, color="black", lw=0.9, ls="--")
    ax.set_xlabel("extra trainable parameters (% of the target's "
                  f"{target / 1e6:.2f}M)" if target else "extra trainable parameters (M)")
    ax.set_ylabel(f"overall speedup over {run.summary['baseline']} (×)")
    ax.set_title("Parameter overhead vs overall speedup (retrieval and copy methods add none)")
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)
    return fig


def overhead_label(overhead: dict, target: int | None) -> str:
    if overhead.get("params"):
        share = f", {100 * overhead['params'] / target:.1f}%" if target else ""
        return f"{overhead['params'] / 1e6:.2f}M params{share}"
    if overhead.get("bytes"):
        return f"no params, datastore {format_overhead(overhead, target)}"
    return "no extra params" if overhead else "overhead unknown"


def time_by_phase(run: Run) -> Figure:
    """Stacked bars: ms per committed token by phase, one bar a method (vanilla first), with
    vanilla's total as a dashed line (below it, a method is faster)."""
    fig = new_figure((9, 5))
    ax = fig.add_subplot()
    names = [n for n, m in run.summary["methods"].items() if m.get("breakdown")]
    phase_colors = {"prefill": "#8C8C8C", "draft": "#DD8452", "verify": "#4C72B0",
                    "rest": "#CCB974"}
    bottom = [0.0] * len(names)
    for phase, shade in phase_colors.items():
        values = [run.summary["methods"][n]["breakdown"]["ms_per_token"][phase] for n in names]
        ax.bar(names, values, bottom=bottom, color=shade, label=phase, zorder=3)
        bottom = [b + v for b, v in zip(bottom, values)]
    base = run.summary["methods"].get(run.summary.get("baseline", "vanilla"), {}).get("breakdown")
    if base:
        total = sum(base["ms_per_token"].values())
        ax.axhline(total, color="black", lw=0.9, ls="--", label=f"vanilla {total:.2f} ms/token")
    ax.set_ylabel("ms per committed token (wall time, device synchronized)")
    ax.set_title("Where the time goes: prefill, drafting, verification forwards, the rest")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return fig


def speedup_vs_batch(run: Run) -> Figure:
    """Left: speedup over vanilla at the same batch size against batch size, one line a method
    (measured solid, the cost model's prediction dotted), the break-even at 1.0 drawn. Right:
    aggregate tokens/s of all sequences together against batch size, vanilla included."""
    fig = new_figure((14, 5.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    batches = run.summary["batches"]
    sizes = sorted({b for curve in batches.values() for b in curve["sizes"]})
    palette = COLORS if len(batches) <= len(COLORS) else \
        [f"C{i}" for i in range(10)] + ["#000080", "#800000", "#008080", "#808000", "#ff1493"]
    for i, (name, curve) in enumerate(batches.items()):
        col = palette[i % len(palette)]
        bs = [int(b) for b in curve["measured"]]
        left.plot(bs, list(curve["measured"].values()), marker=MARKERS[i % len(MARKERS)],
                  color=col, label=name)
        predicted = {int(b): v for b, v in curve["predicted"].items() if v is not None}
        if predicted:
            left.plot(list(predicted), list(predicted.values()), color=col, ls=":", lw=1.2)
        aggregate = {int(b): v for b, v in curve["aggregate_tokens_per_s"].items() if v}
        right.plot(list(aggregate), list(aggregate.values()), marker=MARKERS[i % len(MARKERS)],
                   color=col, label=name)
    baseline = run.summary.get("baseline", "vanilla")
    vanilla = {batch_size_of(n): m.get("aggregate_tokens_per_s")
               for n, m in run.summary["methods"].items() if unbatched(n) == baseline}
    right.plot(sorted(vanilla), [vanilla[b] for b in sorted(vanilla)], color="black", marker="o",
               label=baseline)
    left.axhline(1.0, color="black", lw=0.9, ls="--", label=f"{baseline} (break-even)")
    if any(v is not None for c in batches.values() for v in c["predicted"].values()):
        left.plot([], [], color="#555555", ls=":", label="predicted (cost model)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size (sequences decoded together)")
        ax.grid(alpha=0.3)
    # One legend for both panels, outside them: inside, a dozen methods hide their own points.
    handles, labels = left.get_legend_handles_labels()
    vanilla_line = right.get_legend_handles_labels()[0][-1]
    fig.legend(handles + [vanilla_line], labels + [f"{baseline} (aggregate tokens/s)"],
               loc="outside right center", fontsize=8)
    left.set_ylabel(f"speedup over {baseline} at the same batch size (×)")
    left.set_title("Speedup against batch size")
    right.set_ylabel("aggregate tokens/s (all sequences' tokens / batch wall time)")
    right.set_ylim(bottom=0)
    right.set_title("Throughput against batch size")
    return fig


def speedup_vs_budget(run: Run) -> Figure:
    """Speedup against the tokens verified a step, one line a method (and batch size): the rows
    run at fixed budgets and the method's own size (measured, solid), the fitted budget (a star)
    and the fit's predicted curve over its candidates (dotted)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    curves = run.summary["budgets"]
    ticks = set()
    for i, (group, curve) in enumerate(curves.items()):
        col = COLORS[i % len(COLORS)] if len(curves) <= len(COLORS) else f"C{i % 10}"
        points = sorted((row["budget"], row["speedup"]) for label, row in curve["rows"].items()
                        if label != "auto" and row["budget"] and row["speedup"] is not None)
        ticks.update(b for b, _ in points)
        ax.plot([b for b, _ in points], [s for _, s in points], marker=MARKERS[i % len(MARKERS)],
                color=col, label=group)
        predicted = sorted(curve["predicted_curve"].items())
        if predicted:
            ax.plot([b for b, _ in predicted], [s for _, s in predicted], color=col, ls=":",
                    lw=1.2)
        auto = curve["auto"]
        if auto and auto["measured"] is not None:
            ax.plot([auto["budget"]], [auto["measured"]], marker="*", ms=14, color=col,
                    markeredgecolor="black", ls="none")
            ticks.add(auto["budget"])
    ax.axhline(1.0, color="black", lw=0.9, ls="--", label="vanilla (break-even)")
    ax.plot([], [], marker="*", ms=12, color="#888888", markeredgecolor="black", ls="none",
            label="budget=auto (fitted)")
    ax.plot([], [], color="#555555", ls=":", label="fit's prediction (cost model)")
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xticks(sorted(ticks), [str(b) for b in sorted(ticks)])
    ax.set_xlabel("budget: tokens one verification forward takes (pending token + drafts)")
    ax.set_ylabel("speedup over vanilla (×)")
    ax.set_title("Speedup against budget")
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    return fig


FIGURES = {"speedup_by_subtask": speedup_by_subtask, "speedup_vs_accepted": speedup_vs_accepted,
           "accept_lengths": accept_lengths, "overhead_vs_speedup": overhead_vs_speedup,
           "time_by_phase": time_by_phase, "speedup_vs_batch": speedup_vs_batch,
           "speedup_vs_budget": speedup_vs_budget}


def write_plots(run: Run) -> list[Path]:
    """The figures as PNG and SVG (time by phase only for runs made with --breakdown, speedup
    against batch size only for runs with --batch-size above 1, against budget only for runs
    with --budget); each
    carries the run's model and device underneath."""
    folder = run.path / f"plots{run.suffix}"
    folder.mkdir(exist_ok=True)
    text = "\n".join(textwrap.wrap(caption(run.meta), 150))
    written = []
    has_breakdown = any(m.get("breakdown") for m in run.summary["methods"].values())
    for name, draw in FIGURES.items():
        if name == "time_by_phase" and not has_breakdown or \
                name == "speedup_vs_batch" and not run.summary.get("batches") or \
                name == "speedup_vs_budget" and not run.summary.get("budgets"):
            continue
        fig = draw(run)
        fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=7.5, color="#555555")
        written += save_figure(fig, folder / name)
    return written


def profile_figure(profile: dict, note: str) -> Figure:
    """Forward latency against tokens in the block, one line a context, each with its roofline
    (dotted: the one-token forward, or the products at the device's rate where those take
    longer), and the memory-wall floor (weight bytes / streaming bandwidth) as a dashed line."""
    fig = new_figure((8, 4.8))
    ax = fig.add_subplot()
    roof = profile.get("roofline_cost", {})
    for i, (context, table) in enumerate(profile["latency_seconds"].items()):
        sizes = sorted(int(n) for n in table)
        ax.plot(sizes, [1e3 * table[str(n)] for n in sizes], marker=MARKERS[i % len(MARKERS)],
                color=COLORS[i % len(COLORS)], label=f"context {context}")
        if context in roof:
            ax.plot(sizes, [1e3 * table["1"] * roof[context][str(n)] for n in sizes],
                    linestyle=":", color=COLORS[i % len(COLORS)],
                    label=f"roofline, context {context}")
    floor = 1e3 * profile["floor_seconds"]
    ax.axhline(floor, color="#555555", linestyle="--",
               label=f"memory floor {floor:.2f} ms ({profile['weight_bytes'] / 2**20:.0f} MiB at "
                     f"{profile['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(profile["sizes"], [str(n) for n in profile["sizes"]])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("tokens in the verified block")
    ax.set_ylabel("forward latency (ms, median)")
    ax.legend(fontsize=8)
    fig.text(0.5, -0.01, "\n".join(textwrap.wrap(note, 120)), ha="center", va="top",
             fontsize=7.5, color="#555555")
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(f".{suffix}") for suffix in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.15)
    return paths
