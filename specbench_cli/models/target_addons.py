"""A named real target's add-ons (`specbench prepare smollm2 --addons`), built offline.

1. A corpus by self-distillation (`corpus.py`): prompts in the six subtasks' shapes from text
   that ships with Python, answered greedily by the target under its own chat template.
2. One pass of the target over it (`train.teacher.CachedTeacher`): the hidden states the
   add-ons read and its top-k next-token distribution, so that every trainer gets the target's
   view for the price of one forward over the corpus.
3. Each method's add-on, built by the same function as the built-in benchmark's (the method's
   `builtin_addon.build`) with the settings the method declares for this target
   (`Method.target_addons`).

Everything lands in $SPECBENCH_HOME/targets/<name>/addons-<hash>/, the hash of the corpus and
teacher settings (a change there builds a new folder; a change of one add-on's settings
rebuilds that add-on only). Each part is built in a temporary folder and renamed when complete,
so an interrupted build resumes where it stopped. `specbench run --model smollm2` then gives each
method its add-on by itself, as the built-in default run does.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..bench.prompts import resolve_template
from ..engine.load import load_engine
from ..errors import SpecbenchError
from ..files import atomic_write, checked, read_json
from ..methods import METHODS
from ..methods.base import TargetAddon, fill_addons
from ..train.data import load_examples
from .corpus import build_corpus, recipe_hash
from .prepare import SharedTarget, build_addons, is_ready
from .targets import TARGETS, target_dir, target_folder

# Each target's recipe: the corpus and the teacher cache every add-on is built from. What each
# method builds on it, and the options a run then gives the method, are declared beside the
# method (`Method.target_addons[<target>]`). Sized for the 30-minute aim on a 2-core CPU, whose
# speed varies up to 2x from day to day: every stage is bound by fp32 matrix products (the
# corpus's decoding and each trainer's pass through the 28M-parameter vocab projection), so time
# scales with the corpus's tokens and the steps. Medusa, EAGLE and SpS steps were halved, then
# the corpus cut from 64 prompts a subtask and 160-token answers to 48 and 128
# (docs/real-models.md).
RECIPES = {
    "smollm2": {
        "corpus": {"per_subtask": 48, "seed": 0, "max_new_tokens": 128, "batch_size": 32},
        "max_len": 448,
        # Kangaroo's exit-layer sweep (1-4) and EAGLE-3's fused layers (drafters.eagle3).
        "teacher": {"top_k": 32, "layers": [1, 2, 3, 4, 15, 27]},
    },
}


def declared_addons(name: str) -> dict[str, TargetAddon]:
    """The add-on each method declares for the named target, by method."""
    return {method: cls.target_addons[name] for method, cls in METHODS.items()
            if name in cls.target_addons}


@dataclass
class TargetAddons:
    name: str
    root: Path
    corpus: Path
    addons: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def method_defaults(self) -> dict[str, dict]:
        return {m: fill_addons(addon.options, m, self.addons)
                for m, addon in declared_addons(self.name).items() if m in self.addons}


def addons_root(name: str, home: Path | None = None) -> Path:
    # Keyed by what the corpus and the teacher depend on: a change of one add-on's settings
    # rebuilds that add-on only (its ready.json records the settings it was built with).
    recipe = RECIPES[name]
    key = {k: recipe[k] for k in ("corpus", "max_len", "teacher")}
    return target_dir(name, home) / f"addons-{recipe_hash(key)}"


def is_built(folder: Path, settings: dict) -> bool:
    return is_ready(folder, {"options": settings})


def built_addons(name: str, home: Path | None = None) -> TargetAddons | None:
    """The target's add-ons when they are all built as the recipe says, else None (nothing is
    built here)."""
    if name not in RECIPES:
        return None
    root = addons_root(name, home)
    addons = declared_addons(name)
    found = TargetAddons(name, root, root / "corpus.jsonl", {m: root / m for m in addons})
    return found if all(is_built(root / m, addon.settings)
                        for m, addon in addons.items()) else None


def prepare_addons(name: str, home: Path | None = None, force: bool = False,
                   console: Console | None = None) -> TargetAddons:
    if name not in RECIPES:
        raise SpecbenchError(f"no add-on recipe for {name!r} (have: {', '.join(RECIPES)})")
    console = console or Console()
    recipe = RECIPES[name]
    root = addons_root(name, home)
    if force:
        shutil.rmtree(root, ignore_errors=True)
    folder = target_folder(name, home=home, console=console)
    engine, tokenizer, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    template = resolve_template("auto", tokenizer, name)
    result = TargetAddons(name, root, root / "corpus.jsonl")
    started = time.perf_counter()
    if not (root / "corpus.json").exists():
        tmp = root.parent / f".tmp-{root.name}-corpus"
        shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"{name}: self-distilled corpus ({recipe['corpus']['per_subtask']} prompts "
                      f"a subtask, answers ≤ {recipe['corpus']['max_new_tokens']} tokens) …")
        build_corpus(folder, tokenizer, template, tmp, recipe["corpus"], console)
        root.mkdir(parents=True, exist_ok=True)
        for part in tmp.iterdir():
            part.replace(root / part.name)
        tmp.rmdir()
        result.timings["corpus"] = time.perf_counter() - started
    layers, top_k = recipe["teacher"]["layers"], recipe["teacher"]["top_k"]
    shared = SharedTarget(lambda: (engine, tokenizer, load_examples(
        [result.corpus], tokenizer, recipe["max_len"], template)), layers, top_k, console,
        result.timings)
    wanted = {method: addon.settings for method, addon in declared_addons(name).items()}
    result.addons = build_addons(wanted, root, shared, [result.corpus], console, result.timings,
                                 label=f"{name} ", target_name=name, template=template)
    if result.timings:      # seconds per part, kept across resumed builds
        path = root / "timings.json"
        atomic_write(path, json.dumps({**earlier_timings(path), **result.timings}, indent=2))
    console.print(f"[green]{name} add-ons ready[/] at {root} ({TARGETS[name].license} target)",
                  highlight=False)
    return result


def earlier_timings(path: Path) -> dict:
    """The seconds per part an earlier build recorded; none when it left no readable record
    (they are only a report, so a damaged one is replaced, not an error)."""
    try:
        return checked(read_json(path), {}, str(path)) if path.exists() else {}
    except SpecbenchError:
        return {}
