"""Hydra's two head architectures side by side on the built-in benchmark: the grounded MLP heads
of the built-in add-on and prefix-mlp heads (Hydra++: one decoder layer with its own KV cache
over the hidden states before the heads), trained with the same settings, data and teacher
pass, trees grown from each one's own calibration. The prefix-mlp heads are built once into
$SPECBENCH_HOME/builtin-…/variants/prefix-mlp/hydra; then one `specbench run` sweeps the two.

    .venv/bin/python benchmarks/hydra_prefix.py [--repeats 3] [--out results/hydra-prefix]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from rich.console import Console

from specbench_cli.methods import METHODS
from specbench_cli.models.prepare import TEACHER, build_addons, builtin_target, prepare_all


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/hydra-prefix")
    args = parser.parse_args()
    console = Console()
    prepared = prepare_all(console=console)
    settings = {"hydra": {**METHODS["hydra"].builtin_addon.settings, "arch": "prefix-mlp"}}
    timings = {}
    shared = builtin_target(prepared.base, TEACHER, settings, console, timings)
    variant = build_addons(settings, prepared.base.root / "variants" / "prefix-mlp", shared,
                           [prepared.base.train_file], console, timings,
                           teacher_key=TEACHER)["hydra"]
    mlp = prepared.addons["hydra"]
    command = [sys.executable, "-m", "specbench_cli.cli", "run", "--methods", "vanilla,hydra",
               "--sweep", f"hydra.heads={mlp},{variant}", "--dtype", "fp32", "--repeats",
               str(args.repeats), "--breakdown", "--out", args.out]
    console.print(" ".join(command[2:]))
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
