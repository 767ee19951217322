"""`specbench prepare`: the built-in benchmark plus what its methods need, built once and cached.

The base (tasks, tokenizer, trained model) comes from `builtin.prepare_builtin`; on top, in the
same cache folder, each method that declares a `builtin_addon` (the Kangaroo adapter, the Medusa
heads and their calibrated trees, the REST datastore, ...) gets it built by the project's own
tools, exactly as a user would run them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .builtin import BuiltinAssets, prepare_builtin


@dataclass
class Prepared:
    base: BuiltinAssets
    addons: dict[str, Path] = field(default_factory=dict)     # method → its add-on's folder
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.base.model_dir

    @property
    def question_file(self) -> Path:
        return self.base.question_file

    def method_defaults(self) -> dict[str, dict]:
        """The options the built-in run gives each method unless the user names others, as
        each declares them (`builtin_options`), its add-on's folder filled in."""
        from .methods import ADDON_FOLDER, METHODS
        return {name: {k: str(self.addons[name]) if v == ADDON_FOLDER else v
                       for k, v in cls.builtin_options.items()}
                for name, cls in METHODS.items() if cls.builtin_options}


def declared_addons() -> dict[str, dict]:
    """Each method's built-in add-on settings, as the methods declare them."""
    from .methods import METHODS
    return {name: cls.builtin_addon.settings for name, cls in METHODS.items()
            if cls.builtin_addon is not None}


def build_addon(name: str, settings: dict, base: BuiltinAssets, folder: Path, console: Console):
    from .engine.load import load_engine
    from .methods import METHODS
    engine, tokenizer, _ = load_engine(str(base.model_dir), dtype="fp32", device="cpu")
    METHODS[name].builtin_addon.build(engine, tokenizer, [base.train_file], folder, settings,
                                      console)


def prepare_all(home: Path | None = None, force: bool = False, console: Console | None = None,
                recipe=None, addons: dict | None = None) -> Prepared:
    """Base benchmark, then each method's add-on (`addons` overrides the declared settings by
    method name: tests shrink them). An add-on is built in a temporary folder and renamed into
    place when complete."""
    settings = {**declared_addons(), **(addons or {})}
    console = console or Console()
    started = time.perf_counter()
    base = prepare_builtin(home=home, force=force, console=console, recipe=recipe)
    prepared = Prepared(base, timings={"base": time.perf_counter() - started})
    for name, opts in settings.items():
        folder = base.root / name
        marker = folder / "ready.json"
        # Rebuilt when its settings changed (a newer release of the method), not only when absent.
        built_with = json.loads(marker.read_text()).get("options") if marker.exists() else None
        if force or built_with != json.loads(json.dumps(opts)):
            t = time.perf_counter()
            tmp = base.root / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            build_addon(name, opts, base, tmp, console)
            (tmp / "ready.json").write_text(json.dumps({"options": opts}))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            prepared.timings[name] = time.perf_counter() - t
            console.print(f"{name}: built in {prepared.timings[name]:.1f} s → {folder}")
        prepared.addons[name] = folder
    return prepared


def print_timings(console: Console, prepared: Prepared):
    if not any(k != "base" for k in prepared.timings):
        return
    table = Table(title="preparation time (s, this machine)")
    for name in prepared.timings:
        table.add_column(name, justify="right")
    table.add_row(*[f"{t:.1f}" for t in prepared.timings.values()])
    console.print(table)
