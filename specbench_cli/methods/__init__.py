"""Decoding methods, one file each, behind the `Method` protocol."""

from ..errors import SpecbenchError
from .base import Generation, Method
from .kangaroo import Kangaroo
from .llma import LLMA
from .medusa import Medusa
from .pld import PromptLookup
from .rest import REST
from .vanilla import Vanilla

METHODS: dict[str, type[Method]] = {m.name: m for m in (Vanilla, PromptLookup, LLMA, Kangaroo, Medusa, REST)}


def parse_methods(spec: str) -> list[str]:
    """'vanilla,pld' → checked names; vanilla is always run (every speedup divides by it)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in METHODS:
            raise SpecbenchError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return ["vanilla"] + [n for n in dict.fromkeys(names) if n != "vanilla"]


def base_name(name: str) -> str:
    """'kangaroo@exit_layer=1,threshold=0.4' (a sweep point) → 'kangaroo'."""
    return name.split("@", 1)[0]


def value_labels(values: list) -> dict:
    """How sweep values appear in variant names: paths by their last component (the table stays
    readable), unless two would then look alike."""
    from pathlib import PurePath
    short = {v: PurePath(v).name if isinstance(v, str) and "/" in v else v for v in values}
    return short if len(set(map(str, short.values()))) == len(values) else {v: v for v in values}


def expand_sweeps(names: list[str], options: dict[str, dict], sweeps: list[str]):
    """Apply `--sweep method.option=v1,v2,...` (repeatable): every swept method becomes one
    variant per point of the grid, named 'method@opt=v,opt=v'. Returns (names, options)."""
    import itertools

    import yaml
    grid: dict[str, dict[str, list]] = {}
    for spec in sweeps:
        key, _, values = spec.partition("=")
        method, _, option = key.partition(".")
        if not values or not option:
            raise SpecbenchError(f"--sweep {spec!r}: expected method.option=v1,v2,...")
        if method not in names:
            raise SpecbenchError(f"--sweep {spec!r}: method {method!r} is not in --methods")
        if option not in METHODS[method].defaults:
            raise SpecbenchError(f"--sweep {spec!r}: {method} has no option {option!r}; known: "
                             f"{', '.join(METHODS[method].defaults)}")
        grid.setdefault(method, {})[option] = [yaml.safe_load(v) for v in values.split(",")]
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


__all__ = ["METHODS", "Generation", "Method", "base_name", "expand_sweeps", "parse_methods"]
