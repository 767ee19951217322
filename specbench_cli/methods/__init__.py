"""Decoding methods, one file each, behind the `Method` protocol, and the registry: the one
place a new method is named (its line in METHODS) and where every method's declared options
are parsed, from `--opt`, `--sweep` and run configs alike."""

from __future__ import annotations

import itertools
from pathlib import PurePath

from ..errors import SpecbenchError
from ..names import base_name, batch_size_of, batched, unbatched, with_budget
from ..options import Option, option_value
from .base import ADDON_FOLDER, LARGEST_BUDGET, SMALLEST_BUDGET, Addon, Budget, Generation, \
    Method, Statistic
from .eagle import Eagle
from .eagle3 import Eagle3
from .hydra import Hydra
from .kangaroo import Kangaroo
from .llma import LLMA
from .lookahead import Lookahead
from .medusa import Medusa
from .pld import PromptLookup
from .recycling import TokenRecycling
from .rest import REST
from .sam import SAMDecoding
from .sps import SpS
from .suffix import SuffixDecoding
from .vanilla import Vanilla

METHODS: dict[str, type[Method]] = {m.name: m for m in (
    Vanilla,
    PromptLookup,
    LLMA,
    Kangaroo,
    Medusa,
    REST,
    SpS,
    Lookahead,
    TokenRecycling,
    Eagle,
    Eagle3,
    Hydra,
    SAMDecoding,
    SuffixDecoding,
)}

# `specbench train NAME`: every method that declares a trainer.
TRAINERS = {name: m.trainer for name, m in METHODS.items() if m.trainer is not None}


def parse_methods(spec: str) -> list[str]:
    """'vanilla,pld' → checked names; vanilla is always run (every speedup divides by it)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in METHODS:
            raise SpecbenchError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return ["vanilla"] + [n for n in dict.fromkeys(names) if n != "vanilla"]


def declared_option(method: str, key: str, where: str) -> Option:
    if method not in METHODS:
        raise SpecbenchError(f"{where}: unknown method {method!r}; valid: {', '.join(METHODS)}")
    options = METHODS[method].options
    if key not in options:
        raise SpecbenchError(f"{where}: {method} has no option {key!r}; known: "
                             f"{', '.join(options) or 'none'} (see `specbench list`)")
    return options[key]


def split_spec(spec: str, flag: str) -> tuple[str, str, str]:
    """'method.key=value' → its three parts, or a one-line error naming the flag."""
    key, sep, value = spec.partition("=")
    method, dot, option = key.strip().partition(".")
    if not sep or not dot or not option or not value.strip():
        raise SpecbenchError(f"{flag} {spec!r}: expected method.option=value")
    return method, option.strip(), value.strip()


def parse_options(specs: list[str], flag: str = "--opt") -> dict[str, dict]:
    """`--opt method.key=value` (repeatable) → {method: {key: typed value}}."""
    out: dict[str, dict] = {}
    for spec in specs:
        method, key, value = split_spec(spec, flag)
        where = f"{flag} {spec}"
        out.setdefault(method, {})[key] = option_value(declared_option(method, key, where),
                                                       value, where)
    return out


def parse_sweeps(specs: list[str]) -> dict[str, dict[str, list]]:
    """`--sweep method.key=v1,v2` (repeatable) → {method: {key: [typed values]}}."""
    out: dict[str, dict[str, list]] = {}
    for spec in specs:
        method, key, values = split_spec(spec, "--sweep")
        where = f"--sweep {spec}"
        option = declared_option(method, key, where)
        out.setdefault(method, {})[key] = [option_value(option, v, where)
                                           for v in values.split(",")]
    return out


def checked_options(options: dict[str, dict], where: str) -> dict[str, dict]:
    """Options given as values (a run config, the Python API) checked like `--opt`'s."""
    return {method: {key: option_value(declared_option(method, key, where), value,
                                       f"{where} {method}.{key}")
                     for key, value in (values or {}).items()}
            for method, values in (options or {}).items()}


def checked_sweeps(grid: dict[str, dict[str, list]], where: str) -> dict[str, dict[str, list]]:
    """A sweep grid given as values, each checked like `--sweep`'s."""
    return {method: {key: [option_value(declared_option(method, key, where), v,
                                        f"{where} {method}.{key}") for v in values]
                     for key, values in (keys or {}).items()}
            for method, keys in (grid or {}).items()}


def value_labels(values: list) -> dict:
    """How sweep values appear in variant names: paths by their last component (the table stays
    readable), unless two would then look alike."""
    short = {v: PurePath(v).name if isinstance(v, str) and "/" in v else v for v in values}
    return short if len(set(map(str, short.values()))) == len(values) else {v: v for v in values}


def expand_sweeps(names: list[str], options: dict[str, dict], grid: dict[str, dict[str, list]]):
    """Every swept method becomes one variant per point of its grid, named
    'method@opt=v,opt=v', each with its own options. Returns (names, options)."""
    for method in grid:
        if method not in names:
            raise SpecbenchError(f"--sweep: method {method!r} is not in --methods")
    out_names, out_options = [], {}
    for name in names:
        if name not in grid:
            out_names.append(name)
            if name in options:
                out_options[name] = options[name]
            continue
        keys = list(grid[name])
        labels = {k: value_labels(values) for k, values in grid[name].items()}
        for point in itertools.product(*grid[name].values()):
            variant = f"{name}@" + ",".join(f"{k}={labels[k][v]}" for k, v in zip(keys, point))
            out_names.append(variant)
            out_options[variant] = {**options.get(name, {}), **dict(zip(keys, point))}
    return out_names, out_options


def parse_budgets(spec) -> list:
    """`--budget default,auto,4,8` (or a list, or one number, from a config) → ['default',
    'auto', 4, 8]: each checked, in the order given, repeats dropped."""
    items = spec if isinstance(spec, list) else str(spec).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        value = text if text in ("default", "auto") else None
        if value is None:
            try:
                value = int(text)
            except ValueError:
                raise SpecbenchError(f"--budget {text!r}: give default, auto or the tokens a "
                                     f"step verifies ({SMALLEST_BUDGET} to {LARGEST_BUDGET}), "
                                     "comma-separated") from None
            if not SMALLEST_BUDGET <= value <= LARGEST_BUDGET:
                raise SpecbenchError(
                    f"--budget {value}: a budget is the tokens one verification forward takes, "
                    f"the pending token and at least one draft: {SMALLEST_BUDGET} to "
                    f"{LARGEST_BUDGET}")
        if value not in out:
            out.append(value)
    if not out:
        raise SpecbenchError("--budget: give default, auto or numbers of tokens, comma-separated")
    return out


def expand_budgets(names: list[str], options: dict[str, dict], budgets: list):
    """Every method with a budget (Method.budget) becomes one row per budget: 'pld@budget=8' with
    the options that verify at most 8 tokens a step, 'pld@budget=auto' with its own options
    until the run fits the budget (run/budget.py), and 'pld' itself for 'default'. Methods
    without one (vanilla) keep their one row. Returns (names, options)."""
    out_names, out_options = [], {}
    for name in names:
        declared = METHODS[base_name(name)]
        own = options.get(name, {})
        for budget in budgets if declared.budget else ["default"]:
            row = name if budget == "default" else with_budget(name, budget)
            out_names.append(row)
            chosen = declared.budget.to_options(budget, {**declared.defaults, **own}) \
                if isinstance(budget, int) else {}
            if own or chosen:
                out_options[row] = {**own, **chosen}
    return out_names, out_options


def expand_batch_sizes(names: list[str], sizes: list[int]) -> list[str]:
    """Every method at every batch size ('pld', 'pld+b4', …), batch by batch. Vanilla at batch 1
    is always run: each batched answer must equal its batch-1 vanilla answer."""
    out = [batched(name, size) for size in sizes for name in names]
    return out if 1 in sizes else ["vanilla", *out]


__all__ = ["ADDON_FOLDER", "METHODS", "TRAINERS", "Addon", "Budget", "Generation", "Method", "Option", "Statistic",
           "base_name", "batch_size_of", "batched", "unbatched", "checked_options", "checked_sweeps", "expand_batch_sizes",
           "expand_budgets", "expand_sweeps", "parse_budgets", "parse_methods", "parse_options",
           "parse_sweeps"]
