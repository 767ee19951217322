"""`specbench prepare`: the built-in benchmark plus what its methods need, built once and cached.

The base (tasks, tokenizer, trained model) comes from `builtin.prepare_builtin`; on top, in the
same cache folder, each add-on is built by the project's own tools exactly as a user would run
them: the Kangaroo adapter (`train kangaroo`), the Medusa heads and their calibrated trees
(`train medusa`, `medusa calibrate`) and the REST datastore (`datastore build`).
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

# Sized to take well under two minutes each on two CPU cores.
ADDONS = {
    "kangaroo": {"steps": 300, "lr": 2e-3, "batch_size": 16, "max_len": 256},
    "medusa": {"num_heads": 4, "steps": 300, "lr": 3e-3, "batch_size": 16, "max_len": 256},
    "datastore": {},
}
CALIBRATION_EXAMPLES = 300


@dataclass
class Prepared:
    base: BuiltinAssets
    addons: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.base.model_dir

    @property
    def question_file(self) -> Path:
        return self.base.question_file

    def method_defaults(self) -> dict[str, dict]:
        """Add-on paths the built-in run gives each method unless the user names others, and
        tree sizes for a CPU: a small model's forward grows with every tree token (benchmarks/
        medusa_tree_forward.py), so the widest trees cost more than their extra tokens give."""
        return {"kangaroo": {"adapter": str(self.addons["kangaroo"])},
                "medusa": {"heads": str(self.addons["medusa"]), "tree": "budget16"},
                "rest": {"datastore": str(self.addons["datastore"]), "num_draft": 32}}


def build_addon(name: str, opts: dict, base: BuiltinAssets, folder: Path, console: Console):
    from .engine.load import load_engine
    engine, tokenizer, _ = load_engine(str(base.model_dir), dtype="fp32", device="cpu")
    data = [base.train_file]
    if name == "kangaroo":
        from .train.kangaroo import train_kangaroo
        train_kangaroo(engine, tokenizer, data, folder, target_name="builtin", console=console,
                       **opts)
    elif name == "medusa":
        from .methods.medusa import load_heads
        from .train.medusa import calibrate, train_medusa
        train_medusa(engine, tokenizer, data, folder, target_name="builtin", console=console,
                     **opts)
        heads = load_heads(folder, engine.config.hidden_size, engine.config.vocab_size)
        calibrate(engine, tokenizer, heads, data, folder, max_examples=CALIBRATION_EXAMPLES)
    else:
        from .datastore import build_datastore
        build_datastore(tokenizer, data, folder, "builtin")


def prepare_all(home: Path | None = None, force: bool = False, console: Console | None = None,
                recipe=None, addons: dict | None = None) -> Prepared:
    """Base benchmark, then each add-on (`addons` overrides ADDONS' settings: tests shrink them).
    An add-on is built in a temporary folder and renamed into place when complete."""
    addons = addons or ADDONS
    console = console or Console()
    started = time.perf_counter()
    base = prepare_builtin(home=home, force=force, console=console, recipe=recipe)
    prepared = Prepared(base, timings={"base": time.perf_counter() - started})
    for name, opts in addons.items():
        folder = base.root / name
        marker = folder / "ready.json"
        # Rebuilt when its settings changed (a newer release of this file), not only when absent.
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
