"""The Kangaroo paper's claims, checked on a real target (SmolLM2-135M-Instruct by default).

1. Loss: adapters trained with soft cross-entropy vs with 1 − Σ min(p, q) (the expected
   rejection of a sampled draft, i.e. optimising acceptance directly), same data, steps and
   learning rate; curves of the expected acceptance Σ min(p, q) and of top-1 agreement.
2. Exit layer 1–4 (each its own adapter, cross-entropy) and threshold η 0.4–0.8 (exit layer
   2's adapter): MAT, drafting time per generated token (--breakdown) and speedup on the
   official questions.
3. Parameter overhead and MAT of Kangaroo vs Medusa vs EAGLE: from the target's add-ons
   (`specbench prepare smollm2 --addons`) in one run.

All on the target's self-distilled add-on corpus and one cached teacher pass. Writes
results/kangaroo_claims/{curves.png,svg, claims.json, runs/...} and prints the tables.

    .venv/bin/python benchmarks/kangaroo_claims.py --bench PATH/question.jsonl [--steps 400]
        [--limit 1] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console


def train_adapters(name: str, steps: int, out: Path, console: Console) -> dict[str, Path]:
    """Adapters at exit layers 1–4 (cross-entropy) and at exit layer 2 on acceptance."""
    from rich.progress import Progress

    from specbench_cli.engine.load import load_engine
    from specbench_cli.bench.prompts import resolve_template
    from specbench_cli.models.target_addons import RECIPES, declared_addons, prepare_addons
    from specbench_cli.models.targets import target_folder
    from specbench_cli.train.data import load_examples
    from specbench_cli.train.kangaroo import train_kangaroo
    from specbench_cli.train.teacher import CachedTeacher
    built = prepare_addons(name, console=console)       # the corpus (and the add-ons)
    recipe = RECIPES[name]
    settings = {k: v for k, v in declared_addons(name)["kangaroo"].settings.items() if k != "exit_layer"}
    settings["steps"] = steps
    wanted = {f"exit{e}": {"exit_layer": e} for e in (1, 2, 3, 4)}
    wanted["exit2-acceptance"] = {"exit_layer": 2, "loss": "acceptance"}
    folders = {key: out / "adapters" / key for key in wanted}
    todo = {k: v for k, v in wanted.items() if not (folders[k] / "config.json").exists()}
    if todo:
        engine, tokenizer, _ = load_engine(str(target_folder(name)), dtype="fp32", device="cpu")
        template = resolve_template("auto", tokenizer, name)
        examples = load_examples([built.corpus], tokenizer, recipe["max_len"], template)
        with Progress(console=console) as progress:
            teacher = CachedTeacher(engine, examples, recipe["teacher"]["layers"],
                                    recipe["teacher"]["top_k"], progress)
        for key, extra in todo.items():
            started = time.perf_counter()
            train_kangaroo(engine, tokenizer, [built.corpus], folders[key], console=console,
                           target_name=name, template=template, examples=examples,
                           teacher=teacher, **settings, **extra)
            console.print(f"adapter {key}: {time.perf_counter() - started:.0f} s")
    return folders


def plot_curves(folders: dict[str, Path], out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logs = {key: [json.loads(line) for line in
                  (folders[key] / "training_log.jsonl").read_text().splitlines()]
            for key in ("exit2", "exit2-acceptance")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("exit2", "soft cross-entropy"), ("exit2-acceptance", "1 − Σ min(p, q)")):
        steps = [row["step"] for row in logs[key]]
        for ax, metric in zip(axes, ("accept", "top1_agree")):
            ax.plot(steps, smooth([row[metric] for row in logs[key]]), label=label)
    axes[0].set_title("expected acceptance Σ min(p, q) (training batches, smoothed)")
    axes[1].set_title("top-1 agreement with the target")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"curves.{ext}", dpi=120)
    plt.close(fig)
    return {key: {metric: sum(r[metric] for r in log[-25:]) / len(log[-25:])
                  for metric in ("accept", "top1_agree")}
            for key, log in logs.items()}


def smooth(values: list[float], width: int = 15) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - width + 1):i + 1]
        out.append(sum(window) / len(window))
    return out


def sweep_run(name: str, bench: str, limit: int, max_new_tokens: int, methods: str,
              sweep: dict, out: Path, options: dict | None = None) -> dict:
    """One run with --breakdown; rows: MAT, drafting ms per token, speedup."""
    from specbench_cli import api
    from specbench_cli.analysis.results import load_summarized
    if not (out / "run.json").exists():
        plan = api.plan_run(model=name, bench=bench, methods=methods, limit=limit,
                            max_new_tokens=max_new_tokens, warmup=1, breakdown=True,
                            sweep=sweep, options=options, out=out)
        api.execute(plan)
    summary = load_summarized(out).summary
    rows = {}
    for method, m in summary["methods"].items():
        per_token = (m.get("breakdown") or {}).get("ms_per_token", {})
        per_step = (m.get("breakdown") or {}).get("ms_per_step", {})
        rows[method] = {"MAT": m["mean_accepted_overall"], "speedup": m["speedup_overall"],
                        "draft_ms_per_token": per_token.get("draft"),
                        "draft_ms_per_step": per_step.get("draft"),
                        "verify_ms_per_step": per_step.get("verify"),
                        "equal": m["equal_to_vanilla"]["share"]}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--bench", default="spec_bench")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("results/kangaroo_claims"))
    args = parser.parse_args()
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    folders = train_adapters(args.model, args.steps, args.out, console)
    claims = {"curves": plot_curves(folders, args.out)}
    common = dict(name=args.model, bench=args.bench, limit=args.limit,
                  max_new_tokens=args.max_new_tokens)
    claims["exit_layer"] = sweep_run(
        **common, methods="kangaroo", out=args.out / "runs/exit_layer",
        sweep={"kangaroo": {"adapter": [str(folders[f"exit{e}"]) for e in (1, 2, 3, 4)]}})
    claims["threshold"] = sweep_run(
        **common, methods="kangaroo", out=args.out / "runs/threshold",
        sweep={"kangaroo": {"threshold": [0.4, 0.5, 0.6, 0.7, 0.8]}},
        options={"kangaroo": {"adapter": str(folders["exit2"])}})
    (args.out / "claims.json").write_text(json.dumps(claims, indent=2))
    console.print_json(json.dumps(claims))


if __name__ == "__main__":
    main()
