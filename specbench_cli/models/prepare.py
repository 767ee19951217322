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
from rich.progress import Progress
from rich.table import Table

from ..engine.load import load_engine
from ..methods import METHODS
from ..methods.base import fill_addons
from ..train.data import load_examples
from ..train.teacher import CachedTeacher
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
        return {name: fill_addons(cls.builtin_options, name, self.addons)
                for name, cls in METHODS.items() if cls.builtin_options}


def declared_addons() -> dict[str, dict]:
    """Each method's built-in add-on settings, as the methods declare them."""
    return {name: cls.builtin_addon.settings for name, cls in METHODS.items()
            if cls.builtin_addon is not None}


# The frozen target's view for every built-in add-on (train.teacher.CachedTeacher): one pass over
# the first `conversations` of the training split (answers up to `max_len` tokens), which each
# trainer then cycles through. A cached step costs ~1/4 of one that runs the target again
# (benchmarks/build_profile.py); its top-k distribution drops a tail the built-in model hardly
# has (held-out answer loss ~0.03).
TEACHER = {"conversations": 4000, "top_k": 32, "max_len": 256}


def marker_of(opts: dict, addon, teacher: dict | None) -> dict:
    """What an add-on's ready.json records: a change of either rebuilds it (`teacher`: None
    where the folder's name already holds the teacher's settings)."""
    return {"options": opts,
            **({"teacher": teacher} if addon.uses_teacher and teacher is not None else {})}


def is_ready(folder: Path, marker: dict) -> bool:
    """Whether `folder` was built completely, with exactly what `marker` records."""
    path = folder / "ready.json"
    try:
        return path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(marker))
    except (OSError, ValueError):          # cut short or damaged: built again
        return False


def build_into(folder: Path, marker: dict, build) -> None:
    """`build(tmp)` in a hidden sibling, ready.json (the marker) written last, then swapped in
    for `folder`: an interrupted build leaves the old folder, never a half-built one."""
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    (tmp / "ready.json").write_text(json.dumps(marker))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


class SharedTarget:
    """A frozen target, the conversations its add-ons train on and the target's cached view of
    them (train.teacher.CachedTeacher: hidden states at `layers`, top-`top_k` distributions),
    each made once on first use and shared by every add-on built in one call. `load()` returns
    (engine, tokenizer, examples); the built-in benchmark's and a named target's differ only
    there."""

    def __init__(self, load, layers: list[int], top_k: int, console: Console, timings: dict):
        self._load, self.layers, self.top_k, self.console = load, layers, top_k, console
        self.timings = timings          # the teacher pass's seconds land here, under "teacher"
        self._loaded = self._teacher = None

    def load(self):
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def teacher(self):
        if self._teacher is None:
            engine, _, examples = self.load()
            started = time.perf_counter()
            with Progress(console=self.console) as progress:
                self._teacher = CachedTeacher(engine, examples, self.layers, self.top_k,
                                              progress)
            self.timings["teacher"] = time.perf_counter() - started
        return self._teacher


def build_addons(wanted: dict[str, dict], root: Path, shared: SharedTarget, data: list[Path],
                 console: Console, timings: dict, force: bool = False,
                 teacher_key: dict | None = None, label: str = "", **extra) -> dict[str, Path]:
    """Each add-on in `wanted` (method → the settings its `builtin_addon.build` runs with) into
    root/<method>, unless it is there already, built with the same settings (and `teacher_key`,
    what its teacher was made with, when that is not already in `root`'s name). The target and
    the teacher pass are made only when something is built; `extra` goes to every build."""
    folders = {}
    for name, opts in wanted.items():
        addon = METHODS[name].builtin_addon
        folder, marker = root / name, marker_of(opts, addon, teacher_key)
        # Rebuilt when its settings changed (a newer release of the method), not only when absent.
        if force or not is_ready(folder, marker):
            engine, tokenizer, examples = shared.load()
            # The first add-on that reads the teacher makes it (timed on its own).
            view = {"examples": examples, "teacher": shared.teacher()} if addon.uses_teacher \
                else {}
            started = time.perf_counter()
            build_into(folder, marker, lambda tmp: addon.build(
                engine, tokenizer, data, tmp, dict(opts), console, **view, **extra))
            timings[name] = time.perf_counter() - started
            console.print(f"{label}{name}: built in {timings[name]:.1f} s → {folder}")
        folders[name] = folder
    return folders


def prepare_all(home: Path | None = None, force: bool = False, console: Console | None = None,
                recipe=None, addons: dict | None = None, teacher: dict | None = None) -> Prepared:
    """Base benchmark, then each method's add-on (`addons` overrides the declared settings by
    method name and `teacher` the shared teacher's: tests shrink them)."""
    settings = {**declared_addons(), **(addons or {})}
    teacher = {**TEACHER, **(teacher or {})}
    console = console or Console()
    started = time.perf_counter()
    base = prepare_builtin(home=home, force=force, console=console, recipe=recipe)
    prepared = Prepared(base, timings={"base": time.perf_counter() - started})
    shared = builtin_target(base, teacher, settings, console, prepared.timings)
    prepared.addons = build_addons(settings, base.root, shared, [base.train_file], console,
                                   prepared.timings, force=force, teacher_key=teacher)
    return prepared


def builtin_target(base: BuiltinAssets, teacher: dict, settings: dict, console: Console,
                   timings: dict) -> SharedTarget:
    """The built-in model, its training conversations and their teacher pass (holding the
    layers the add-ons in `settings` read), for `build_addons`."""

    def load():
        engine, tokenizer, _ = load_engine(str(base.model_dir), dtype="fp32", device="cpu")
        return engine, tokenizer, load_examples([base.train_file], tokenizer, teacher["max_len"],
                                                limit=teacher["conversations"])
    layers = sorted({layer for name in settings
                     for layer in METHODS[name].builtin_addon.teacher_layers})
    return SharedTarget(load, layers, teacher["top_k"], console, timings)


def print_timings(console: Console, prepared: Prepared):
    if not any(k != "base" for k in prepared.timings):
        return
    table = Table(title="preparation time (s, this machine)")
    for name in prepared.timings:
        table.add_column(name, justify="right")
    table.add_row(*[f"{t:.1f}" for t in prepared.timings.values()])
    console.print(table)
