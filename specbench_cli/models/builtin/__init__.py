"""The offline built-in mini benchmark: generated Spec-Bench-style tasks and a small trained Llama.

`prepare_builtin()` builds (or reuses) a folder named after the recipe's hash:

    builtin-<hash>/model/          Hugging Face model + tokenizer (AutoModelForCausalLM/AutoTokenizer)
    builtin-<hash>/question.jsonl  held-out questions, Spec-Bench format, `reference` = gold answers
    builtin-<hash>/train.jsonl     training conversations {"turns", "answers", "category"}
    builtin-<hash>/done.json       written last: recipe, quality, hashes, timings

A build happens in a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ...errors import SpecbenchError
from ...files import checked, read_json, sha256_of, specbench_home
from .recipe import RECIPE_VERSION, Recipe, tiny_recipe
from .summary import print_summary

__all__ = ["BuiltinAssets", "Recipe", "RECIPE_VERSION", "default_home", "prepare_builtin", "tiny_recipe"]

MODEL_DIR, QUESTION_FILE, TRAIN_FILE, DONE_FILE = "model", "question.jsonl", "train.jsonl", "done.json"


@dataclass(frozen=True)
class BuiltinAssets:
    root: Path
    model_dir: Path
    question_file: Path
    train_file: Path
    quality: dict
    hashes: dict
    reused: bool


# One definition each, shared with the question files' cache and checksums.
default_home = specbench_home
sha256_file = sha256_of


def _assets(root: Path, done: dict, reused: bool) -> BuiltinAssets:
    return BuiltinAssets(root=root, model_dir=root / MODEL_DIR, question_file=root / QUESTION_FILE,
                         train_file=root / TRAIN_FILE, quality=done["quality"], hashes=done["hashes"],
                         reused=reused)


def _read_done(root: Path) -> dict | None:
    """A complete build's done.json, checked against the files it hashes; None where there is
    no build, or (with one line) where the build was damaged since: it is then built again."""
    if not (root / DONE_FILE).exists():
        return None
    try:
        done = checked(read_json(root / DONE_FILE), {"quality": dict, "hashes": dict},
                       str(root / DONE_FILE))
        bad = [name for name, digest in done["hashes"].items()
               if not (root / MODEL_DIR / name).is_file()
               or sha256_of(root / MODEL_DIR / name) != digest]
        if not bad:
            return done
        why = f"{', '.join(bad)} changed since it was built"
    except SpecbenchError as err:
        why = str(err)
    print(f"specbench: the built-in benchmark at {root} is damaged ({why}); building it again",
          file=sys.stderr, flush=True)
    return None


def _install(tmp: Path, root: Path) -> None:
    """Move a finished build to `root`, replacing an older one; never leaves a half folder there."""
    old = None
    if root.exists():
        old = root.with_name(f".old-{root.name}-{os.getpid()}")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if _read_done(root) is None:  # not a concurrent build of the same recipe that won the race
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_builtin(home: Path | None = None, force: bool = False, seed: int = 0, console=None,
                    recipe: Recipe | None = None) -> BuiltinAssets:
    """Build the built-in benchmark, or reuse a complete earlier build of the same recipe.

    `recipe` overrides the default recipe (tests pass `tiny_recipe()`); `seed` is used only
    without one. Progress, hashes, the quality table and timings go to `console`.
    """


    console = console or Console()
    recipe = recipe or Recipe(seed=seed)
    home = Path(home).expanduser() if home else default_home()
    root = home / f"builtin-{recipe.hash()}"
    done = None if force else _read_done(root)
    if done is not None:
        console.print(f"[green]built-in benchmark ready[/] at {root} (reused)")
        print_summary(console, done)
        return _assets(root, done, reused=True)

    from .build import build  # torch and transformers: only when there is something to build

    # A hidden sibling (same file system, so the final rename is atomic), with the usual permissions.
    tmp = home / f".tmp-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    console.print(f"building the built-in benchmark once (cached in {home}): tasks, a tokenizer, "
                  f"a {recipe.num_layers}-layer model trained for {recipe.steps} steps and its "
                  f"quality check; the time it takes here is estimated once a step is timed",
                  highlight=False)
    try:
        done = build(tmp, recipe, console)
        (tmp / DONE_FILE).write_text(json.dumps(done, indent=1) + "\n")  # last: marks it complete
        _install(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[green]built-in benchmark built[/] at {root}")
    print_summary(console, done)
    return _assets(root, done, reused=False)
