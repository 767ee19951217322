"""Baseline files and the regression gate.

A baseline file (YAML or JSON) holds per-method numbers and what they were measured on:

    kind: regression            # or: published (leaderboards and papers, baselines/published/)
    name: builtin-cpu
    model: /path/or/hub-id       # compared by model_key(): last path part (builtin-<hash>/model)
    machine: 2-core CPU
    bench: builtin
    command: specbench run ...
    methods:
      pld: {speedup_overall: 1.31, mean_accepted_overall: 1.52, equal_to_vanilla: 1.0,
            speedup: {qa: 1.2, ...}}

`compare` fails (exit 1) when a method's overall speedup or MAT fell more than an absolute
tolerance below the baseline, or its share of answers equal to vanilla's dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml
from rich.markup import escape
from rich.table import Table

from ..errors import SpecbenchError
from ..files import read_text
from .metrics import MetricsError
from .results import Run, caption, describe_missing, fmt, load_by_device, missing

# Package data (importlib.resources), so an installed tool never needs the checkout; the
# checkout's baselines/published is a link to this folder.
PUBLISHED_DIR = files("specbench_cli.analysis") / "published"
METHOD_FIELDS = ("speedup_overall", "mean_accepted_overall", "equal_to_vanilla")


class BaselineError(MetricsError):
    """A baseline that cannot be read or does not fit the run; one line for the user."""


# ---------------------------------------------------------------- baseline files

def one_device(path: Path, baseline_name: str | None, counting: str,
               tokenizer: Path | None) -> Run:
    """A run to gate on: its devices' speedups are not one number, so one device only."""
    runs = load_by_device(path, baseline_name, counting, tokenizer)
    if len(runs) > 1:
        raise BaselineError(f"{path}: its workers ran on {len(runs)} kinds of device ("
                            f"{', '.join(run.device for run in runs)}); gate on a run of one")
    return runs[0]


def published_names() -> list[str]:
    return sorted(p.name[:-5] for p in PUBLISHED_DIR.iterdir() if p.name.endswith(".yaml"))


def load_baseline(spec: str | Path, baseline_name: str | None = None, counting: str = "ids",
                  tokenizer: Path | None = None) -> dict:
    """A baseline file, a name under baselines/published/, or a run directory (summarized,
    counted as `counting`)."""
    path = Path(spec)
    if path.is_dir():
        return baseline_from_run(one_device(path, baseline_name, counting, tokenizer))
    if not path.exists() and (PUBLISHED_DIR / f"{spec}.yaml").is_file():
        path = PUBLISHED_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise BaselineError(f"baseline {spec} does not exist (give a baseline file, a run "
                            f"directory, or a published name: {', '.join(published_names())})")
    try:
        doc = yaml.safe_load(read_text(path, BaselineError))   # JSON is YAML too
    except yaml.YAMLError as err:
        raise BaselineError(f"{path}: not YAML/JSON ({str(err).splitlines()[0]})") from None
    check_baseline(doc, path)
    doc.setdefault("name", path.stem)
    return doc


def check_baseline(doc, path: Path) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict) or not doc["methods"]:
        raise BaselineError(f"{path}: a baseline needs a 'methods' mapping (method → numbers)")
    for name, m in doc["methods"].items():
        if not isinstance(m, dict):
            raise BaselineError(f"{path}: methods.{name} must be a mapping of numbers")
        for key in METHOD_FIELDS:
            value = m.get(key)
            if value is not None and not isinstance(value, (int, float)):
                raise BaselineError(f"{path}: methods.{name}.{key} must be a number or null "
                                    f"(got {value!r})")


def clean(x):
    """NaN (unknown) as null. Not rounded: a saved baseline must gate its own run at tolerance 0."""
    return None if missing(x) else x


def machine_kind(env: dict) -> str:
    return env.get("gpu") or (f"{env['cpu_count']}-core CPU" if env.get("cpu_count") else "?")


def command_line(cfg: dict) -> str:
    """The `specbench run` options that decide the numbers (method options are in run.json)."""
    parts = ["specbench run"]
    if not model_key(cfg.get("model", "")).startswith("builtin-"):
        parts.append(f"--model {cfg.get('model')}")
    for opt, key in (("--bench", "bench"), ("--limit", "limit"),
                     ("--max-new-tokens", "max_new_tokens"), ("--repeats", "repeats"),
                     ("--warmup", "warmup"), ("--dtype", "dtype"), ("--device", "device")):
        if cfg.get(key) is not None:
            parts.append(f"{opt} {cfg[key]}")
    if cfg.get("methods"):
        parts.append("--methods " + ",".join(cfg["methods"]))
    return " ".join(parts)


def baseline_from_run(run: Run) -> dict:
    cfg, env = run.meta.get("config", {}), run.meta.get("environment", {})
    methods = {}
    for name, m in run.summary["methods"].items():
        methods[name] = {
            "speedup_overall": clean(m["speedup_overall"]),
            "mean_accepted_overall": clean(m["mean_accepted_overall"]),
            "equal_to_vanilla": clean(m["equal_to_vanilla"]["share"]),
            "speedup": {s: clean(v) for s, v in m["speedup"].items()},
            "speedup_std": clean(m["speedup_std"]),
            "questions": m["questions"], "repeats": m["repeats"]}
    return {"kind": "regression", "name": run.label, "model": cfg.get("model", "?"),
            "machine": machine_kind(env), "cpu": env.get("cpu"), "bench": cfg.get("bench"),
            "command": command_line(cfg), "git_commit": env.get("git_commit"),
            "counting": run.summary["counting"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source_run": str(run.path),
            "caption": caption(run.meta), "methods": methods}


def save_baseline(run: Run, path: Path) -> dict:
    doc = baseline_from_run(run)
    text = (json.dumps(doc, indent=2) if path.suffix == ".json"
            else yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return doc


# ---------------------------------------------------------------- the gate

def model_key(model: str) -> str:
    """What identifies a model across machines: the folder or hub name, not where it lies.
    The built-in model's folder is builtin-<recipe hash>/model, so it keeps both parts."""
    parts = [p for p in str(model).replace("\\", "/").split("/") if p]
    if not parts:
        return ""
    keep = parts[-2:] if parts[-1] == "model" and len(parts) > 1 else parts[-1:]
    return "/".join(keep).lower()


@dataclass
class Verdict:
    method: str
    base: dict
    run: dict | None
    reasons: list[str] = field(default_factory=list)


def gate(run: Run, baseline: dict, speedup_tolerance: float = 0.1,
         accepted_tolerance: float = 0.02) -> list[Verdict]:
    """One verdict a baseline method; a verdict with reasons is a regression."""
    for opt, tol in (("--speedup-tolerance", speedup_tolerance),
                     ("--accepted-tolerance", accepted_tolerance)):
        if tol < 0:
            raise SpecbenchError(f"{opt} must be 0 or more (got {tol})")
    if baseline.get("placeholder"):
        raise BaselineError(f"baseline {baseline.get('name')} is a placeholder without numbers; "
                            "write it from a real run: specbench compare --save RUN FILE")
    if run.summary["missing"]:
        raise BaselineError(f"{run.path}: methods answered different questions, the numbers are "
                            f"not comparable: {describe_missing(run.summary)}")
    run_model, base_model = run.meta.get("config", {}).get("model", "?"), baseline.get("model")
    if base_model and model_key(base_model) != model_key(run_model):
        raise BaselineError(f"baseline {baseline.get('name')} is for model {base_model}, but "
                            f"{run.path} ran {run_model}: compare runs of the same model")
    verdicts = []
    for name, base in baseline["methods"].items():
        mine = run.summary["methods"].get(name)
        if mine is None and baseline.get("kind") == "published":
            continue            # a leaderboard lists methods a run need not have (see notes)
        verdict = Verdict(name, base, None if mine is None else {
            "speedup_overall": mine["speedup_overall"],
            "mean_accepted_overall": mine["mean_accepted_overall"],
            "equal_to_vanilla": mine["equal_to_vanilla"]["share"]})
        if mine is None:
            verdict.reasons.append("not in the run")
        else:
            verdict.reasons += dropped(verdict.run, base, speedup_tolerance, accepted_tolerance)
        verdicts.append(verdict)
    return verdicts


def dropped(now: dict, base: dict, speedup_tolerance: float,
            accepted_tolerance: float) -> list[str]:
    reasons = []
    for key, label, tol in (("speedup_overall", "speedup", speedup_tolerance),
                            ("mean_accepted_overall", "MAT", accepted_tolerance)):
        if not missing(base.get(key)) and (missing(now[key]) or now[key] < base[key] - tol):
            reasons.append(f"{label} {fmt(now[key])} < {base[key]:.2f} − {tol:g}")
    # Equality is checked where both sides have token ids; any drop is a regression.
    eq_now, eq_base = now["equal_to_vanilla"], base.get("equal_to_vanilla")
    if not missing(eq_base) and not missing(eq_now) and eq_now < eq_base - 1e-9:
        reasons.append(f"equal {100 * eq_now:.0f}% < {100 * eq_base:.0f}%")
    return reasons


def share(x) -> str:
    return "n/a" if missing(x) else f"{100 * x:.0f}%"


def verdict_table(verdicts: list[Verdict], title: str, note: str) -> Table:
    table = Table(title=title, caption=note)
    for col in ("method", "speedup base", "run", "Δ", "MAT base", "run", "Δ", "equal base",
                "run", "verdict"):
        table.add_column(col, justify="left" if col in ("method", "verdict") else "right",
                         no_wrap=col != "verdict")
    for v in verdicts:
        now = v.run or dict.fromkeys(METHOD_FIELDS)
        cells = [escape(v.method)]
        for key in ("speedup_overall", "mean_accepted_overall"):
            b, r = v.base.get(key), now[key]
            delta = None if missing(b) or missing(r) else round(r - b, 2) + 0.0  # no "-0.00"
            cells += [fmt(b), fmt(r), fmt(delta, "+.2f")]
        cells += [share(v.base.get("equal_to_vanilla")), share(now["equal_to_vanilla"]),
                  "[red]REGRESSION: " + escape("; ".join(v.reasons)) + "[/red]" if v.reasons
                  else "[green]ok[/green]"]
        table.add_row(*cells)
    return table


def notes(run: Run, baseline: dict) -> list[str]:
    """Differences that do not fail the gate but make numbers less comparable."""
    out = []
    env, cfg = run.meta.get("environment", {}), run.meta.get("config", {})
    if baseline.get("machine") and env and machine_kind(env) != baseline["machine"]:
        out.append(f"machine differs: baseline {baseline['machine']}, run {machine_kind(env)}")
    if baseline.get("bench") and cfg.get("bench") and str(cfg["bench"]) != str(baseline["bench"]):
        out.append(f"bench differs: baseline {baseline['bench']}, run {cfg['bench']}")
    # Saved baselines say how they counted; older ones and published tables do not.
    if baseline.get("counting") and baseline["counting"] != run.summary["counting"]:
        out.append(f"counting differs: baseline {baseline['counting']}, run "
                   f"{run.summary['counting']} (speedups are not comparable)")
    new = [m for m in run.summary["methods"] if m not in baseline["methods"]]
    if new:
        out.append(f"not in the baseline (not gated): {', '.join(new)}")
    if baseline.get("kind") == "published":
        absent = [m for m in baseline["methods"] if m not in run.summary["methods"]]
        if absent:
            out.append(f"published only, not in the run: {', '.join(absent)}")
    return out
