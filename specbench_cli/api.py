"""The Python API: what `specbench run` does, as functions a notebook can call.

    from specbench_cli import api
    plan = api.plan_run(methods="pld,kangaroo", options={"kangaroo": {"threshold": 0.5}})
    out = api.execute(plan)          # answers, run.json (interrupt: --resume continues it)
    frame = api.results(out)         # the leaderboard as a pandas frame

or `api.run(...)` for the three at once. The CLI is a thin shell over these: its options are
plan_run's arguments, and a run config file (`specbench run --config run.yaml`) holds the same
keys. Errors meant for users are SpecbenchError.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import yaml
from rich.console import Console

from .analysis.compare import gate, load_baseline, notes, one_device, save_baseline, verdict_table
from .analysis.report import leaderboard, profile_caption
from .analysis.results import load_by_device, read_run_json
from .bench.prompts import AUTO, TEMPLATES, build_prompt_ids, resolve_template
from .bench.questions import bench_subtasks, load_questions, parse_subtasks, resolve_bench, \
    select
from .drafters import datastore
from .errors import SpecbenchError
from .files import folder_lock, read_text, sha256_of
from .names import base_name, budget_of, unbatched
from .run_options import BUILTIN_LIMIT, CONFIG_FILE, DEFAULT_METHODS, RUN_DEFAULTS, SHARDING, \
    checked_run_options, signature

# Whatever loads torch or transformers (the engine, methods, targets, runner) is imported inside
# the function that needs it: `specbench compare` and `report`, and notebooks that only read
# results, import this module without them (~1.5 s; tests/test_results.py).

RESULTS = Path("results")


@dataclass
class RunPlan:
    """A checked run, nothing loaded or written yet but the model folder and tokenizer."""
    config: object              # runner.RunConfig: everything that decides the numbers
    folder: Path                # the model's folder (fetched or converted when named/GGUF)
    tokenizer: object
    questions: list
    out: Path
    resume: bool                # continue the run already in `out`
    profile: Path | None        # with breakdown: a profile.json to use instead of measuring
    dtype_why: str = "given"    # how the dtype was chosen (--dtype auto measures; run.json)
    fit_questions: list = ()    # --budget auto: held-out questions the budgets are fitted on


def plan_run(console: Console | None = None, **given) -> RunPlan:
    """Check a run and resolve what it needs. The keywords are `specbench run`'s options
    (run_options.RUN_OPTIONS, where each is declared with its type, default and bounds; or see
    `specbench run --help`): e.g. `options`: {method: {option: value}} or
    ["method.option=value", ...]; `sweep`: {method: {option: [values]}} or
    ["method.option=v1,v2", ...]; `batch_size`: 4, [1, 2, 4] or '1,2,4'."""
    from .engine.load import choose_dtype, load_tokenizer
    from .bench.questions import held_out
    from .methods import expand_batch_sizes, expand_budgets, expand_sweeps
    from .models.targets import model_folder
    from .run.runner import check_context
    console = console or Console()
    s = checked_plan(checked_run_options(given))       # nothing prepared or loaded yet
    if s.endpoint:
        return plan_endpoints(s, console)
    for name in ("baseline", "concurrency", "request_timeout"):
        if given.get(name) not in (None, RUN_DEFAULTS[name]):
            raise SpecbenchError(f"--{name.replace('_', '-')} is for --endpoint runs")
    prepared, bench, bench_file, limit, over_context = choose_bench(s, console)
    model, names, opts = resolve_methods(s.model, s.methods, s.options, console, prepared)
    every_question = load_questions(bench_file)
    questions = select(every_question, s.subtasks, limit)
    names, opts = expand_sweeps(names, opts, s.sweep)
    names, opts = expand_budgets(names, opts, s.budget)
    names = expand_batch_sizes(names, s.batch_sizes)
    folder = model_folder(model, console=console)   # fetches/converts named and GGUF targets
    dtype, dtype_why = choose_dtype(s.dtype, s.device, folder, console)
    tokenizer = load_tokenizer(folder)
    template = resolve_template(s.template, tokenizer, model)
    # Fail before anything is written when a template or a prompt cannot work here.
    build_prompt_ids(tokenizer, template, [questions[0].turns[0]], [])
    check_context(questions, tokenizer, template, s.max_new_tokens, folder, over_context)
    config = run_config(s, model=model, bench=bench, bench_file=bench_file, limit=limit,
                        methods=names, method_options=opts, template=template, dtype=dtype,
                        over_context=over_context)
    out, resume = resolve_out(s.out, s.resume, config, model, console)
    fit = held_out(every_question, questions, s.subtasks) if "auto" in s.budget else []
    return RunPlan(config, folder, tokenizer, questions, out, resume, s.profile, dtype_why, fit)


def plan_endpoints(s: SimpleNamespace, console: Console) -> RunPlan:
    """A run of deployed servers (`--endpoint NAME=URL`, run/endpoint.py): each endpoint a row
    at every --concurrency, the questions as for our engine; every server asked for its models
    before anything is written, so a wrong URL or model name ends here in one line."""
    from .names import batched
    from .run.endpoint import check_model, parse_endpoints
    ours = {"methods": s.methods, "options": s.options, "sweep": s.sweep,
            "breakdown": s.breakdown, "compile": s.compile, "temperature": s.temperature,
            "budget": s.budget != ["default"], "batch_size": max(s.batch_sizes) > 1}
    clash = [k.replace("_", "-") for k, v in ours.items() if v]
    if clash:
        raise SpecbenchError(f"--endpoint rows are the servers' own decoding: leave out "
                             f"--{', --'.join(clash)} (a report can join runs: `specbench "
                             "report A B`); --concurrency sets requests in flight")
    # a config file may give one endpoint as a string; the run stores the list
    s.endpoint = [s.endpoint] if isinstance(s.endpoint, str) else list(s.endpoint)
    endpoints = parse_endpoints(s.endpoint)
    names = [e.name for e in endpoints]
    if s.baseline not in names:
        raise SpecbenchError(f"no endpoint named {s.baseline!r} to divide speedups by: name one "
                             f"so, or pass --baseline with one of {', '.join(names)}")
    if s.bench in (None, "builtin"):
        raise SpecbenchError("--endpoint runs take real questions: --bench spec_bench (the "
                             "official file) or a question file's path")
    _, bench, bench_file, limit, over_context = choose_bench(
        SimpleNamespace(**{**vars(s), "model": "endpoint"}), console)
    questions = select(load_questions(bench_file), s.subtasks, limit)
    models = {e.name: check_model(e, s.model, s.request_timeout) for e in endpoints}
    sizes = parse_counts("--concurrency", ",".join(map(str, s.concurrency))
                         if isinstance(s.concurrency, list) else str(s.concurrency))
    # The baseline answers at one request in flight too: every row's answers must equal those.
    rows = [batched(name, size) for size in sizes for name in names]
    rows = rows if 1 in sizes else [s.baseline, *rows]
    s.batch_sizes, s.continuous = sizes, max(sizes) > 1
    config = run_config(s, model=models[s.baseline], bench=bench, bench_file=bench_file,
                        limit=limit, methods=rows, template="server",
                        method_options={e.name: {"url": e.url, "model": models[e.name]}
                                        for e in endpoints},
                        over_context=over_context, dtype="server")
    out, resume = resolve_out(s.out, s.resume, config, "endpoints-" + models[s.baseline].replace(
        "/", "-"), console)
    return RunPlan(config, None, None, questions, out, resume, None, "the servers' own")


def checked_plan(values: dict) -> SimpleNamespace:
    """The cheap checks, before anything is prepared or loaded, over the run options' values
    (bounds and types are checked already): the rules between options, choices, paths, and
    the texts parsed (subtasks, methods, options, sweeps, batch sizes, device, dtype)."""
    from .engine.load import resolve_device, resolve_dtype
    from .methods import checked_options, checked_sweeps, parse_budgets, parse_methods, \
        parse_options, parse_sweeps
    from .run.runner import OVER_CONTEXT
    s = SimpleNamespace(**values)
    check_sampling_options(s.temperature, s.top_p, s.top_k)
    batch = s.batch_size
    s.batch_sizes = parse_counts("--batch-size", ",".join(map(str, batch))
                                 if isinstance(batch, list) else str(batch))
    if s.continuous and max(s.batch_sizes) == 1:
        raise SpecbenchError("--continuous refills batches: give --batch-size above 1 too")
    if s.template not in (AUTO, *TEMPLATES):
        raise SpecbenchError(f"--template {s.template!r}: choose one of {AUTO}, "
                             f"{', '.join(TEMPLATES)}")
    if s.over_context not in (None, *OVER_CONTEXT):
        raise SpecbenchError(f"--over-context {s.over_context!r}: choose one of "
                             f"{', '.join(OVER_CONTEXT)}")
    s.out = Path(s.out) if s.out is not None else None
    s.profile = Path(s.profile) if s.profile is not None else None
    if s.profile is not None and not s.profile.is_file():
        raise SpecbenchError(f"--profile {s.profile}: no such file")
    if s.out is not None and any(p.exists() and not p.is_dir() for p in (s.out, *s.out.parents)):
        raise SpecbenchError(f"--out {s.out}: a file is in the way; give a directory for the run")
    if isinstance(s.methods, list):
        s.methods = ",".join(map(str, s.methods))
    s.device = resolve_device(s.device)
    resolve_dtype(s.dtype, s.device)                   # a bad name is an error before loading
    s.subtasks = parse_subtasks(s.tasks, bench_subtasks(s.bench))  # Spec- or SPEED-Bench's
    parse_methods(s.methods or DEFAULT_METHODS)
    s.options = parse_options(s.options) if isinstance(s.options, list) else \
        checked_options(s.options, "options")
    s.sweep = parse_sweeps(s.sweep) if isinstance(s.sweep, list) else \
        checked_sweeps(s.sweep, "sweep")
    s.budget = parse_budgets(s.budget)
    return s


def choose_bench(s: SimpleNamespace, console: Console):
    """(the prepared built-in benchmark or None, bench name, question file, limit,
    over-context policy): the built-in benchmark is built on first use when it or its model is
    asked for; it caps answers at its model's context and runs 5 questions a subtask."""
    prepared, bench, limit, over_context = None, s.bench, s.limit, s.over_context
    if s.model is None or bench == "builtin":
        from .models.prepare import prepare_all
        prepared = prepare_all(console=console)
        if bench in (None, "builtin"):
            # Its model knows 512 positions and its answers end well before.
            return prepared, "builtin", prepared.question_file, limit or BUILTIN_LIMIT, \
                over_context or "cap"
    bench = bench or "spec_bench"
    return prepared, bench, resolve_bench(bench), limit, over_context or "error"


def run_config(s: SimpleNamespace, bench_file: Path, **resolved):
    """The run's RunConfig (what run.json stores and --resume compares): each field a run
    option of the same name carries, unless the plan `resolved` it (a dtype, a template)."""
    from .engine.load import DTYPE_NAMES
    from .run.runner import RunConfig
    resolved["dtype"] = DTYPE_NAMES.get(resolved["dtype"], resolved["dtype"])
    given = {f.name: getattr(s, f.name) for f in fields(RunConfig) if hasattr(s, f.name)}
    return RunConfig(**{**given, **resolved, "bench_sha256": sha256_of(bench_file),
                        "device": str(s.device)})


plan_run.__signature__ = inspect.Signature([
    inspect.Parameter("console", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    *signature(("plan",)).parameters.values()])


def resolve_methods(model: str | None, methods: str | None, given: dict, console: Console,
                    prepared=None):
    """(model, method names, each method's options) as a run resolves them, and every command
    that builds methods with it: no model means the built-in one (`prepared`, else built now)
    with every method and its add-ons; a named target gets its built add-ons; the user's
    options (`given`, {method: {option: value}}) go on top, and options left unset take the
    method's default."""
    from .methods import METHODS, parse_methods
    from .models.targets import TARGETS
    defaults: dict[str, dict] = {}
    if model is None:
        from .models.prepare import prepare_all
        prepared = prepared or prepare_all(console=console)
        model, defaults = str(prepared.model_dir), prepared.method_defaults()
        methods = methods or ",".join(METHODS)
    elif model in TARGETS:
        defaults = target_addon_defaults(model, parse_methods(methods or DEFAULT_METHODS),
                                         console)
    names = parse_methods(methods or DEFAULT_METHODS)
    for method in given:
        if method not in names:
            raise SpecbenchError(f"options for {method}, which is not in --methods")
    opts = {n: {**defaults.get(n, {}), **given.get(n, {})} for n in names}
    opts = {n: {k: v for k, v in o.items() if v is not None} for n, o in opts.items() if o}
    return model, names, opts


def check_sampling(model: str | None = None, methods: str | None = None,
                   prompt: str = "Tell me about the capital of the world.", tokens: int = 3,
                   samples: int = 1000, temperature: float = 0.3, top_p: float = 1.0,
                   top_k: int = 0, alpha: float = 1e-3, options: dict | list[str] | None = None,
                   dtype: str | None = None, device: str | None = None,
                   console: Console | None = None, progress=None):
    """`specbench check-sampling`: each method's answers against vanilla's, a chi-square test
    of homogeneity on their first `tokens` tokens (run.sampling_check). Methods and their
    options are resolved as `specbench run` resolves them (built-in or named-target add-ons
    included); `progress(method)` is called after each. Returns the per-method results."""
    from .engine.load import load_engine
    from .methods import METHODS, checked_options, parse_options
    from .methods.verify import Sampling
    from .models.targets import model_folder
    from .run.runner import eos_token_ids
    from .run.sampling_check import check_sampling as run_check
    console = console or Console()
    check_sampling_options(temperature, top_p, top_k)
    if temperature <= 0:
        raise SpecbenchError("--temperature must be above 0: greedy runs are checked by "
                             "equality in every report")
    if tokens < 1 or samples < 10:
        raise SpecbenchError("--tokens must be at least 1 and --samples at least 10")
    given = parse_options(options) if isinstance(options, list) else \
        checked_options(options, "options")
    model, names, opts = resolve_methods(model, methods, given, console)
    engine, tokenizer, _ = load_engine(model_folder(model, console=console), dtype=dtype,
                                       device=device)
    ids = build_prompt_ids(tokenizer, resolve_template("auto", tokenizer, model), [prompt], [])
    eos = eos_token_ids(engine, tokenizer)
    built = {n: METHODS[n](engine, eos, tokenizer, **opts.get(n, {})) for n in names}
    return run_check(built, ids, tokens, samples, Sampling(temperature, top_p, top_k), alpha,
                     progress=progress)


def target_addon_defaults(model: str, methods: list[str], console: Console) -> dict:
    """A named target's add-ons as the methods' default options, once built (`specbench
    prepare NAME --addons`); a note when a method that needs one asks before they are."""
    from .models.target_addons import built_addons, declared_addons
    built = built_addons(model)
    if built is not None:
        return built.method_defaults()
    wanting = [m for m in methods if m in declared_addons(model)]
    if wanting:
        console.print(f"note: {model}'s add-ons for {', '.join(wanting)} are not built; build "
                      f"them with `specbench prepare {model} --addons` (~40 min) or pass "
                      "your own with --opt", highlight=False)
    return {}


def check_sampling_options(temperature: float, top_p: float, top_k: int):
    if temperature < 0:
        raise SpecbenchError(f"--temperature must be 0 (greedy) or more (got {temperature})")
    if not 0 < top_p <= 1:
        raise SpecbenchError(f"--top-p must be in (0, 1] (got {top_p})")
    if top_k < 0:
        raise SpecbenchError(f"--top-k must be 0 (all tokens) or more (got {top_k})")
    if not temperature and (top_p < 1 or top_k):
        raise SpecbenchError("--top-p and --top-k shape sampling: give --temperature > 0 too")


def execute(plan: RunPlan, console: Console | None = None, progress=None, workers: int = 0,
            ray_address: str | None = None) -> Path:
    """Load the engine and run the plan: answers are appended question by question (a
    KeyboardInterrupt keeps them; plan the same run with resume=True to continue). Returns the
    run directory. `workers` > 0: shard the questions over that many Ray workers, one device
    each (`distributed.execute_sharded`; a local Ray instance unless `ray_address`).
    The run directory is locked while this process writes there: a second run on it (a script
    started twice) is refused with one line, so no answer is ever written twice."""
    with folder_lock(plan.out, "specbench run"):
        if not plan.resume and (plan.out / "run.json").exists():     # written while we planned
            raise SpecbenchError(f"{plan.out} holds a run already; use --resume to continue it "
                                 "or another --out")
        with torch_threads(plan.config.threads):
            return execute_locked(plan, console, progress, workers, ray_address)


@contextmanager
def torch_threads(threads: int | None):
    """torch's CPU threads set for a while (None: left as they are); set before the engine
    loads, since the kernel choices are measured and cached per thread count."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute_locked(plan: RunPlan, console, progress, workers: int, ray_address) -> Path:
    from .engine.load import load_engine
    from .run.runner import Runner, run_meta, write_run_json
    console = console or Console()
    config, out = plan.config, plan.out
    if config.endpoint:
        if workers:
            raise SpecbenchError("--workers shards our engine's work; endpoint rows run from "
                                 "this process (--concurrency sets requests in flight)")
        return execute_endpoints(plan, console, progress)
    fitted = [name for name in config.methods if budget_of(name) == "auto"]
    if workers:
        from .run.distributed import execute_sharded
        if max(config.batch_sizes) > 1:
            raise SpecbenchError("--workers shards questions one at a time; --batch-size above 1 "
                                 "runs in this process only (leave out --workers)")
        if fitted:
            raise SpecbenchError("--budget auto fits each budget in this process before the "
                                 "timed questions: leave out --workers, or give the budgets "
                                 "as numbers")
        return execute_sharded(plan, workers, ray_address, console, progress)
    console.print(f"loading {config.model} ({config.dtype} on {config.device}, template "
                  f"{config.template}) …")
    engine, _, _ = load_engine(str(plan.folder), dtype=config.dtype, device=config.device,
                               with_tokenizer=False, compile=config.compile)
    runner = Runner(config, engine, plan.tokenizer, plan.questions, out,
                    Path(config.model).name)
    if fitted:
        runner.use_budgets(fitted_budgets(plan, runner, fitted, console, progress))
    if not plan.resume:
        out.mkdir(parents=True, exist_ok=True)
        write_run_json(out, {**run_meta(config, engine, runner, plan.dtype_why),
                             **({"budgets": runner.fits} if fitted else {})})
    console.print(f"{len(plan.questions)} questions × {len(config.methods)} methods × "
                  f"{config.repeats} repeats → {out}")
    started = time.perf_counter()
    runner.run(progress)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    if config.breakdown:
        from .run.profile import attach_profile, measured_profile, prompt_lengths
        batches = [b for b in config.batch_sizes if b > 1]
        attach_profile(lambda contexts: measured_profile(engine, config.model, contexts,
                                                         progress=progress, batch_sizes=batches),
                       out, plan.profile, prompt_lengths(plan))
    return out


def execute_endpoints(plan: RunPlan, console: Console, progress) -> Path:
    """Endpoint rows: run.json (this client's machine, each endpoint's URL and model), then the
    questions through the servers."""
    from .run.endpoint import STATISTICS, EndpointRunner
    from .run.runner import environment, write_run_json
    import torch
    config, out = plan.config, plan.out
    if not plan.resume:
        out.mkdir(parents=True, exist_ok=True)
        write_run_json(out, {
            "config": asdict(config), "baseline": config.baseline,
            "dtype_choice": plan.dtype_why, "environment": environment(torch.device("cpu")),
            "engine": "endpoints",
            "methods": {row: {"options": config.method_options[unbatched(row)],
                              "overhead": None, "lossless": True, "statistics": STATISTICS,
                              "info": {"endpoint": config.method_options[unbatched(row)]["url"]}}
                        for row in config.methods},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    console.print(f"{len(plan.questions)} questions × {len(config.methods)} endpoint rows × "
                  f"{config.repeats} repeats → {out}")
    started = time.perf_counter()
    EndpointRunner(config, plan.questions, out).run(progress)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    return out


def fitted_budgets(plan: RunPlan, runner, rows: list[str], console: Console, progress
                   ) -> dict[str, dict]:
    """The budgets of `--budget auto` rows: fitted now (run/budget.py; cached), or, when the
    run is resumed, as its run.json recorded them, so that every answer of a row comes from the
    same options."""
    from .run.budget import fit_budgets, model_stamp
    if plan.resume:
        stored = read_run_json(plan.out / "run.json").get("budgets") or {}
        if set(rows) <= set(stored):
            return {row: stored[row] for row in rows}
    console.print(f"fitting the budgets of {', '.join(dict.fromkeys(map(base_name, rows)))} on "
                  f"held-out questions (of {len(plan.fit_questions)}: as many as vanilla answers "
                  "in 2 s; cached once measured) …")
    return fit_budgets(runner, rows, list(plan.fit_questions),
                       model_stamp(plan.config.model, plan.folder), progress)


def results(run_dir: Path | str):
    """A run's leaderboard as a pandas frame indexed by method (unrounded numbers; columns as
    `specbench report --format csv`); by (run [device], method) when a sharded run's workers
    had different devices."""
    runs = load_by_device(Path(run_dir))
    frame = leaderboard(runs).drop(columns=["published"])
    if len(runs) > 1:
        return frame.set_index(["run", "method"])
    return frame.drop(columns=["run"]).set_index("method")


def run(console: Console | None = None, progress=None, workers: int = 0,
        ray_address: str | None = None, **arguments):
    """plan_run(**arguments), execute it (sharded over Ray `workers` when given) and return its
    results frame."""
    return results(execute(plan_run(console=console, **arguments), console, progress, workers,
                           ray_address))


def read_run_config(path: Path) -> dict:
    """A YAML/JSON run config: `specbench run`'s options as keys ('max-new-tokens' or
    'max_new_tokens'; run_options.RUN_OPTIONS), each value checked for type and bounds;
    `options` and `sweep` as mappings method → option → value(s), or lists of
    'method.option=value' strings like the command line's. Returns the keys it holds."""
    path = Path(path)
    if not path.is_file():
        raise SpecbenchError(f"--config {path}: no such file")
    try:
        doc = yaml.safe_load(read_text(path, SpecbenchError)) or {}
    except yaml.YAMLError as err:
        raise SpecbenchError(f"--config {path}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise SpecbenchError(f"--config {path}: expected a mapping of run options")
    doc = {str(k).replace("-", "_"): v for k, v in doc.items()}
    values = checked_run_options(doc, CONFIG_FILE, where=f"--config {path}: ")
    for key in ("options", "sweep"):
        value = doc.get(key)
        if isinstance(value, dict) and not all(isinstance(v, dict) for v in value.values()):
            raise SpecbenchError(f"--config {path}: {key} must map each method to its options")
    return {k: values[k] for k in doc}


def merge_options(first: dict | list | None, then: dict | list | None, parse) -> dict:
    """Options (or sweeps) from a config, then from the command line, which wins per key."""
    def as_dict(value):
        return parse(value) if isinstance(value, list) else dict(value or {})
    merged = {m: dict(v) for m, v in as_dict(first).items()}
    for method, values in as_dict(then).items():
        merged.setdefault(method, {}).update(values)
    return merged


# ---------------------------------------------------------------- run directories

def stored_config(run_json: Path) -> dict:
    """The configuration an earlier run stored, its run.json checked (one line if garbled)."""
    return read_run_json(run_json)["config"]


def stored_settings(run_json: Path) -> dict:
    """An earlier run's stored configuration, each field it predates at RunConfig's default
    (a run written before batch sizes existed ran at batch 1)."""
    from .run.runner import RunConfig
    defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                for f in fields(RunConfig)
                if f.default is not MISSING or f.default_factory is not MISSING}
    return {**defaults, **stored_config(run_json)}


def find_resumable(config) -> Path | None:
    """The newest run under results/ whose stored configuration equals this one."""
    candidates = sorted(RESULTS.glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if stored_settings(path) == asdict(config):
            return path.parent
    return None


def check_resume(out: Path, config) -> None:
    stored = stored_settings(out / "run.json")
    diff = [k for k, v in asdict(config).items() if stored.get(k) != v]
    if diff:
        raise SpecbenchError(f"--resume: {out} was run with other options ({', '.join(diff)} "
                             "differ)")


def resolve_out(out: Path | None, resume: bool, config, model: str,
                console: Console) -> tuple[Path, bool]:
    """The run directory and whether an earlier run there is continued."""
    if resume and out is None:
        out = find_resumable(config)
        if out is None:
            raise SpecbenchError("--resume: no earlier run with these options under results/ "
                                 "(pass its directory with --out)")
    if resume and (out / "run.json").exists():
        check_resume(out, config)
        return out, True
    if resume and (out / "answers").is_dir() and any((out / "answers").iterdir()):
        raise SpecbenchError(f"--resume: {out} holds answers but no run.json, so its options "
                             "cannot be checked; use another --out")
    if resume:      # killed before the run directory was written: nothing to continue
        console.print(f"--resume: no earlier run in {out}; starting it", highlight=False)
    if out is None:
        out = RESULTS / f"{Path(model.rstrip('/')).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "run.json").exists():
        raise SpecbenchError(f"{out} holds a run already; use --resume to continue it or "
                             "another --out")
    return out, False


def parse_counts(option: str, text: str) -> list[int]:
    """'256,2048' → sorted distinct integers ≥ 1, or a one-line error naming the option."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SpecbenchError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise SpecbenchError(f"{option} {text!r}: expected integers of at least 1")
    return values


def profile(model: str | None = None, dtype: str | None = None, device: str | None = None,
            contexts: str = "256,2048", sizes: str = "1,2,4,8,16,32,64", repeats: int = 10,
            out: Path | None = None, console: Console | None = None, progress=None,
            compile: bool = False, batch_sizes: str | None = None):
    """`specbench profile`: block latencies at each context, bandwidth and the memory floor,
    written to OUT/profile.json with its plot; with `batch_sizes` ('2,4,8'), joined forwards
    of that many sequences too. Returns (the profile, its folder)."""
    from .analysis.plots import profile_figure, save_figure  # matplotlib: ~1 s to import
    from .engine.load import load_engine
    from .models.targets import model_folder
    from .run.profile import write_profile
    from .run.runner import model_context
    console = console or Console()
    wanted, sizes = parse_counts("--contexts", contexts), parse_counts("--sizes", sizes)
    batches = [b for b in parse_counts("--batch-sizes", batch_sizes) if b > 1] \
        if batch_sizes else []
    if 1 not in sizes:
        raise SpecbenchError("--sizes must include 1 (every cost is relative to a one-token step)")
    if repeats < 1:
        raise SpecbenchError(f"--repeats must be at least 1 (got {repeats})")
    if model is None:
        from .models.prepare import prepare_all
        model = str(prepare_all(console=console).model_dir)
    folder = model_folder(model, console=console)
    limit = model_context(folder)
    kept = [c for c in wanted if limit is None or c + max(sizes) <= limit]
    for c in sorted(set(wanted) - set(kept)):
        console.print(f"context {c} skipped: with {max(sizes)} more tokens it passes the "
                      f"model's {limit} positions")
    if not kept:
        raise SpecbenchError(f"no context fits the model's {limit} positions")
    engine, _, _ = load_engine(str(folder), dtype=dtype, device=device, with_tokenizer=False,
                               compile=compile)
    name = Path(model.rstrip("/")).name
    out = Path(out) if out else RESULTS / f"profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = write_profile(engine, model, out / "profile.json", kept, sizes, repeats, progress,
                           batches)
    save_figure(profile_figure(result, profile_caption(result, name)), out / "profile")
    return result, out


def train(name: str, model: str, data: list[Path], out: Path, dtype: str = "fp32",
          device: str | None = None, template: str = "auto", console: Console | None = None,
          **options) -> dict:
    """`specbench train NAME`: the trainer method NAME declares (`Method.trainer`) on the frozen
    target; `options` are the trainer's own and the common ones (steps, batch_size, max_len,
    seed). Returns its final metrics."""
    from .engine.load import load_engine
    from .methods import TRAINERS
    from .models.targets import model_folder
    if name not in TRAINERS:
        raise SpecbenchError(f"no trainer {name!r} (have: {', '.join(TRAINERS)})")
    for key in ("steps", "batch_size", "max_len"):
        if key in options and options[key] < 1:
            raise SpecbenchError(f"--{key.replace('_', '-')} must be at least 1 (got "
                                 f"{options[key]})")
    console = console or Console()
    engine, tokenizer, _ = load_engine(model_folder(model, console=console), dtype=dtype,
                                       device=device)
    with folder_lock(Path(out), "specbench train"):     # one trainer per output folder
        return TRAINERS[name].function(engine, tokenizer, data, Path(out), target_name=model,
                                       console=console, **options,
                                       template=resolve_template(template, tokenizer, model))


def calibrate_medusa(model: str, heads: str, data: list[Path], max_examples: int = 200) -> dict:
    """`specbench medusa calibrate`: each head's top-k accuracy on held-out conversations and
    the trees grown from it, written as calibration.json beside the heads."""
    from .drafters.medusa import heads_path, load_heads
    from .engine.load import load_engine
    from .models.targets import model_folder
    from .train.medusa import calibrate
    engine, tokenizer, _ = load_engine(model_folder(model), dtype="fp32")
    folder = heads_path(heads)
    loaded = load_heads(folder, engine.config.hidden_size, engine.config.vocab_size,
                        engine.lm_head)
    return calibrate(engine, tokenizer, loaded.to(engine.device), data,
                     folder if folder.is_dir() else folder.parent, max_examples)


def build_datastore(tokenizer: str, data: list[Path], out: Path, console: Console | None = None,
                    progress=None) -> dict:
    """`specbench datastore build`: REST's datastore of the corpus under the model's tokenizer."""
    from .engine.load import load_tokenizer
    from .models.targets import model_folder
    console = console or Console()
    tok = load_tokenizer(model_folder(tokenizer, console=console))
    m = datastore.build_datastore(tok, data, out, tokenizer, progress)
    console.print(f"datastore {out}: {m['tokens']:,} tokens, {m['bytes'] / 2**20:.1f} MiB, built "
                  f"in {m['build_seconds']:.1f} s ({m['tokens_per_second']:,.0f} tokens/s)")
    return m


def compare(run_dir: Path, baseline: Path, speedup_tolerance: float = 0.1,
            accepted_tolerance: float = 0.02, save: bool = False,
            baseline_name: str | None = None, counting: str = "ids", tokenizer: Path | None = None,
            console: Console | None = None) -> list[str]:
    """`specbench compare`: the regression gate of `run_dir` against a baseline (a file, a
    published name or another run), printed as a table; returns the methods that regressed.
    With `save`, writes the baseline from `run_dir` instead."""
    console = console or Console()
    run = one_device(run_dir, baseline_name, counting, tokenizer)
    if save:
        doc = save_baseline(run, baseline)
        console.print(f"baseline written to {baseline} ({len(doc['methods'])} methods, model "
                      f"{doc['model']}, {doc['machine']})", highlight=False)
        return []
    base = load_baseline(baseline, baseline_name, counting, tokenizer)
    verdicts = gate(run, base, speedup_tolerance, accepted_tolerance)
    console.print(verdict_table(verdicts, f"{run.label} against {base.get('name', baseline)}",
                                f"tolerances: speedup −{speedup_tolerance:g}, MAT "
                                f"−{accepted_tolerance:g} (absolute)"
                                + "".join(f"\nnote: {n}" for n in notes(run, base))))
    failed = [v.method for v in verdicts if v.reasons]
    console.print(f"[red]regression[/red] in {', '.join(failed)}" if failed
                  else "[green]no regression[/green]", highlight=False)
    return failed


def run_arguments(config: Path | None, typed: dict, options: list[str], sweep: list[str]):
    """`specbench run`'s arguments: a run config's values, then what was typed on the command
    line (`typed`, which wins), `--opt`/`--sweep` merged per method. Returns (plan_run's
    arguments, which plan_run checks, and the sharding arguments for `execute`, checked here)."""
    from .methods import parse_options, parse_sweeps
    arguments = read_run_config(config) if config else {}
    arguments.update(typed)
    arguments["options"] = merge_options(arguments.get("options"), options, parse_options)
    arguments["sweep"] = merge_options(arguments.get("sweep"), sweep, parse_sweeps)
    shards = checked_run_options({k: arguments.pop(k) for k in SHARDING if k in arguments},
                                 ("execute",))
    if shards["ray_address"] and not shards["workers"]:
        raise SpecbenchError("--ray-address is for sharded runs: give --workers N too")
    return arguments, shards


def prepare(target: str = "builtin", force: bool = False, home: Path | None = None,
            addons: bool = False, console: Console | None = None):
    """`specbench prepare`: the built-in benchmark with every add-on, or a named target fetched,
    verified and converted (with `addons`, its add-ons too). Reuses what is cached unless
    `force`; prints what it built and how long each part took."""
    from .models.prepare import prepare_all, print_timings
    from .models.targets import TARGETS, target_folder
    console = console or Console()
    if target in TARGETS:
        started = time.perf_counter()
        folder = target_folder(target, home=home, console=console, force=force)
        console.print(f"[green]{target} ready[/] at {folder} ({TARGETS[target].description}; "
                      f"{TARGETS[target].license}) in {time.perf_counter() - started:.1f} s",
                      highlight=False)
        if addons:
            from .models.target_addons import prepare_addons
            built = prepare_addons(target, home=home, force=force, console=console)
            console.print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in built.timings.items())
                          or "  (all add-ons were built already)", highlight=False)
        return
    if addons:
        raise SpecbenchError("--addons is for a named real target (the built-in benchmark "
                             "always builds its own)")
    if target != "builtin":
        raise SpecbenchError(f"prepare {target!r}: choose builtin or one of {', '.join(TARGETS)}")
    print_timings(console, prepare_all(home=home, force=force, console=console))
