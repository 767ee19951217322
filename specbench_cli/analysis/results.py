"""What report, plots and compare share: loading a run (ours or a folder of Spec-Bench answer
files) and summarizing it, the answer files' names, and how numbers are written.

Kept free of torch and of the other modules' tables and figures, so that `specbench report` and
`specbench compare` start fast and report and plots need not import each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import SpecbenchError
from ..files import checked, read_json
from .metrics import COUNTING, NEAR_TIE, MetricsError, load_answers, summarize

ANSWERS_DIR = "answers"

# The leaderboard's column names: Spec-Bench's six subtasks, then SPEED-Bench's categories
# (qa, rag, summarization shared), each name its own so that runs of both can sit side by side.
SHORT = {"mt_bench": "MT", "translation": "Trans", "summarization": "Sum", "qa": "QA",
         "math_reasoning": "Math", "rag": "RAG",
         "coding": "Code", "humanities": "Hum", "math": "Mth", "multilingual": "Multi",
         "reasoning": "Reas", "roleplay": "Role", "stem": "STEM", "writing": "Write",
         "low_entropy": "LowEnt", "mixed": "Mixed", "high_entropy": "HighEnt"}


def answer_file_name(method: str) -> str:
    """A method's answer file: sweep variants may carry paths ('medusa@heads=/x/y'), so the name
    is percent-encoded (reversibly: `method_of_answer_file`)."""
    return quote(method, safe="@=,.+-_ ") + ".jsonl"


def method_of_answer_file(path: Path) -> str:
    return unquote(path.stem)


# ---------------------------------------------------------------- loading

# What run.json must hold for a report, a resume and a comparison to read it.
RUN_JSON = {"config": dict, "environment?": dict, "methods?": dict}
RUN_CONFIG = {"model": str, "methods": list, "repeats?": int}


def read_run_json(path: Path) -> dict:
    """A run's run.json, checked: one line naming the file where it is garbled or lacks a field
    the readers use."""
    meta = checked(read_json(path, MetricsError), RUN_JSON, str(path), MetricsError)
    checked(meta["config"], RUN_CONFIG, f"{path}: config", MetricsError)
    return meta



@dataclass
class Run:
    """A loaded run: where it is, its run.json (or what an import could tell), answers, numbers."""
    path: Path
    meta: dict
    answers: dict[str, list[dict]]
    summary: dict
    device: str | None = None       # set when a sharded run's workers had different devices

    @property
    def label(self) -> str:
        return self.path.resolve().name + (f" [{self.device}]" if self.device else "")

    @property
    def suffix(self) -> str:
        """Apart in file names (summary.json, plots/) when a run is shown device by device."""
        return "-" + "".join(c if c.isalnum() else "_" for c in self.device) if self.device else ""


def load_run(run_dir: Path, baseline_name: str | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """run.json (or an import's stand-in) and the answers by method, baseline first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f"run directory {run_dir} does not exist")
    if not (run_dir / ANSWERS_DIR).is_dir() and any(run_dir.glob("*.jsonl")):
        return import_specbench(run_dir, baseline_name)
    meta_path = run_dir / "run.json"
    meta = read_run_json(meta_path) if meta_path.exists() else {}
    files = sorted((run_dir / ANSWERS_DIR).glob("*.jsonl"))
    answers = {method_of_answer_file(f): load_answers(f) for f in files}
    answers = {k: v for k, v in answers.items() if v}
    if not answers:
        raise MetricsError(f"{run_dir}: no answers yet (empty run)")
    if baseline_name:
        meta["baseline"] = pick_baseline(list(answers), baseline_name, run_dir)
    # Keep the run's own method order (vanilla first).
    order = meta.get("config", {}).get("methods", [])
    return meta, dict(sorted(answers.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def import_specbench(folder: Path, baseline_name: str | None) -> tuple[dict, dict[str, list[dict]]]:
    """A folder of Spec-Bench answer files: one method a file, named after its model id.
    Method names are the file names less their common prefix (the model, e.g. vicuna-7b-v1.3)."""
    files = [f for f in sorted(folder.glob("*.jsonl")) if f.stat().st_size]
    if not files:
        raise MetricsError(f"{folder}: no answers yet (empty run)")
    model, names = split_common_prefix([f.stem for f in files])
    answers = {name: checked_specbench_lines(path) for name, path in zip(names, files)}
    # A method is also known by its file name and the model_id inside (for --baseline-name).
    ids = {name: {path.stem} | {r.get("model_id") for r in answers[name]}
           for name, path in zip(names, files)}
    baseline = pick_baseline(names, baseline_name, folder, ids)
    order = [baseline] + [n for n in names if n != baseline]
    meta = {"imported": str(folder), "baseline": baseline,
            "config": {"model": model or "?", "bench": "spec_bench (imported answer files)",
                       "methods": order, "repeats": 1}}
    return meta, {n: answers[n] for n in order}


def checked_specbench_lines(path: Path) -> list[dict]:
    rows = load_answers(path)       # each line checked against Spec-Bench's fields
    for row in rows:
        # Their vanilla script may leave accept lengths out: MAT then shows as unknown.
        row["choices"][0].setdefault("accept_lengths", [])
    return rows


def split_common_prefix(stems: list[str]) -> tuple[str, list[str]]:
    """('vicuna-7b-v1.3', ['vanilla-float16', 'medusa']) from the files' names, split at '-';
    every name keeps at least its last part."""
    parts = [s.split("-") for s in stems]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    if len(stems) == 1:
        common = 0
    return "-".join(parts[0][:common]), ["-".join(p[common:]) for p in parts]


def pick_baseline(names: list[str], chosen: str | None, where: Path,
                  ids: dict[str, set] | None = None) -> str:
    """The method every speedup divides by: --baseline-name (a method name, file name or model
    id), else the one name that says vanilla or baseline."""
    ids = ids or {n: set() for n in names}
    if chosen:
        hits = [n for n in names if chosen == n or chosen in ids.get(n, set())]
        if not hits:
            raise MetricsError(f"--baseline-name {chosen!r} is none of {where}'s answer files "
                               f"({', '.join(names)})")
        return hits[0]
    hits = [n for n in names if any(w in " ".join(map(str, {n} | ids.get(n, set()))).lower()
                                    for w in ("vanilla", "baseline"))]
    if len(hits) != 1:
        found = f"candidates {', '.join(hits)}" if hits else "no name says vanilla or baseline"
        raise MetricsError(f"{where}: cannot tell which answer file is vanilla decoding ({found}); "
                           f"pass --baseline-name with one of: {', '.join(names)}")
    return hits[0]


def load_summarized(run_dir: Path, baseline_name: str | None = None, counting: str = "ids",
                    tokenizer: Path | None = None) -> Run:
    """A run and its numbers. `counting`: how the baseline's tokens are counted in speedups
    (metrics.COUNTING); spec_bench needs the model's tokenizer (`tokenizer`, else run.json's)."""
    check_counting(counting, tokenizer)
    meta, answers = load_run(run_dir, baseline_name)
    return summarized(Path(run_dir), meta, answers, counting, tokenizer)


def check_counting(counting: str, tokenizer: Path | None):
    if counting not in COUNTING:
        raise SpecbenchError(f"--counting {counting!r}: choose one of {', '.join(COUNTING)}")
    if tokenizer and counting != "spec_bench":
        raise SpecbenchError("--tokenizer is for --counting spec_bench (ids need no tokenizer)")


def device_environment(meta: dict, row: dict) -> dict:
    """The machine an answer was generated on: its worker's (sharded runs), else the run's."""
    worker = meta.get("workers", {}).get(row.get("worker"))
    return worker["environment"] if worker else meta.get("environment", {})


def load_by_device(run_dir: Path, baseline_name: str | None = None, counting: str = "ids",
                   tokenizer: Path | None = None) -> list[Run]:
    """A run, or one Run per device when a sharded run's workers had different devices: a
    speedup compares vanilla and a method on the same device only, and every question's
    methods ran on one worker, so each device's answers pair among themselves."""
    check_counting(counting, tokenizer)
    meta, answers = load_run(run_dir, baseline_name)
    groups: dict[str, dict[str, list[dict]]] = {}
    environments: dict[str, dict] = {}
    for name, rows in answers.items():
        for row in rows:
            env = device_environment(meta, row)
            device = env.get("gpu") or env.get("cpu") or "?"
            environments.setdefault(device, env)
            groups.setdefault(device, {}).setdefault(name, []).append(row)
    if len(groups) < 2:
        return [summarized(Path(run_dir), meta, answers, counting, tokenizer)]
    return [summarized(Path(run_dir), {**meta, "environment": environments[device]}, part,
                       counting, tokenizer, device) for device, part in groups.items()]


def summarized(run_dir: Path, meta: dict, answers: dict[str, list[dict]], counting: str,
               tokenizer: Path | None, device: str | None = None) -> Run:
    meta["counting"] = counting
    dtype = meta.get("config", {}).get("dtype", "fp32")
    # Statistics each method declares in run.json (older runs and imports declare none).
    declared = {name: m.get("statistics") or [] for name, m in meta.get("methods", {}).items()}
    base_count = spec_bench_count(meta, tokenizer) if counting == "spec_bench" else None
    summary = summarize(answers, baseline=meta.get("baseline", "vanilla"),
                        near_tie=NEAR_TIE.get(dtype, NEAR_TIE["fp32"]), declared=declared,
                        base_count=base_count,
                        sampled=bool(meta.get("config", {}).get("temperature")))
    summary["run"] = str(run_dir)
    summary["device"] = meta.get("environment", {})
    summary["overhead"] = {k: v.get("overhead") for k, v in meta.get("methods", {}).items()}
    summary["target_parameters"] = meta.get("model_parameters")
    return Run(Path(run_dir), meta, answers, summary, device)


def spec_bench_count(meta: dict, tokenizer: Path | None):
    """An answer's tokens as Spec-Bench's evaluation/speed.py counts its baseline's: every
    turn's text re-tokenized, less one a turn (`len(tokenizer(text).input_ids) - 1`: the BOS a
    Llama tokenizer adds; with one that adds none, speed.py drops a real token, and so do we)."""
    tok = counting_tokenizer(meta, tokenizer)

    def count(row: dict) -> int:
        turns = row["choices"][0].get("turns")
        if turns is None:
            raise MetricsError(f"--counting spec_bench re-tokenizes answer texts, but question "
                               f"{row['question_id']}'s answer has no choices[0].turns")
        return sum(len(tok(text).input_ids) - 1 for text in turns)
    return count


def counting_tokenizer(meta: dict, tokenizer: Path | None):
    """--tokenizer, else the tokenizer of run.json's model (named targets and GGUF files through
    their converted folders). Imported here: torch and transformers load only for this."""
    # torch and the tokenizer only for --counting spec_bench: reports are read without them
    from ..engine.load import load_tokenizer
    from ..models.targets import model_folder
    model = meta.get("config", {}).get("model", "?")
    try:
        return load_tokenizer(Path(tokenizer) if tokenizer else model_folder(str(model)))
    except SpecbenchError as err:
        raise SpecbenchError(f"--counting spec_bench needs the model's tokenizer ({err}); pass "
                             "--tokenizer PATH") from None


# ---------------------------------------------------------------- numbers as text

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


def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, spec=".2f", suffix="") -> str:
    return "–" if missing(x) else f"{x:{spec}}{suffix}"


def caption(meta: dict) -> str:
    cfg, env = meta.get("config", {}), meta.get("environment", {})
    # The default (ids) goes unsaid, as in captions written before there was a choice.
    counting = (" · speedups by Spec-Bench's token counting (speed.py)"
                if meta.get("counting", "ids") != "ids" else "")
    if meta.get("imported"):
        return (f"imported Spec-Bench answers {meta['imported']} · model {cfg.get('model', '?')} "
                f"· speedups over {meta.get('baseline')}{counting}")
    device = env.get("gpu") or env.get("cpu") or "?"
    if cfg.get("endpoint"):     # the servers' own engines; only the client ran here
        return (f"endpoints {', '.join(cfg['endpoint'])} (the servers' engines, not specbench's) "
                f"· model {cfg.get('model', '?')} · bench {cfg.get('bench', '?')} · "
                f"max_new_tokens {cfg.get('max_new_tokens', '?')} · repeats "
                f"{cfg.get('repeats', '?')} · timed from this client ({device})")
    return (f"model {cfg.get('model', '?')} · {cfg.get('dtype', '?')} on {cfg.get('device', '?')} "
            f"({device}, {env.get('torch_threads', '?')} threads) · bench {cfg.get('bench', '?')} · "
            f"max_new_tokens {cfg.get('max_new_tokens', '?')} · repeats {cfg.get('repeats', '?')}"
            f"{sampling_caption(cfg)}{counting}")


def sampling_caption(cfg: dict) -> str:
    if not cfg.get("temperature"):
        return ""              # greedy, unsaid as before sampling existed
    cut = "".join(f", {k} {cfg[k]}" for k, off in (("top_p", 1.0), ("top_k", 0))
                  if cfg.get(k, off) != off)
    return f" · sampled: temperature {cfg['temperature']}{cut}, seed {cfg.get('seed', 0)}"


def describe_missing(summary: dict) -> str:
    """'medusa lacks q3 r1, q5 r2; pld lacks q9 r1' (r = repeat, 1-based, shown with repeats)."""
    repeats = max(m["repeats"] for m in summary["methods"].values()) > 1
    return "; ".join(
        f"{name} lacks " + ", ".join(f"q{q}" + (f" r{r + 1}" if repeats else "") for q, r in keys)
        for name, keys in summary["missing"].items())
