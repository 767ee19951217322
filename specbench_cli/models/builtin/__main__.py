"""`python -m specbench_cli.models.builtin [--force] [--home DIR] [--seed N]`: build the built-in benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import prepare_builtin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specbench_cli.models.builtin", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    parser.add_argument("--home", type=Path, default=None,
                        help="folder for builds (default: $SPECBENCH_HOME or the user cache folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    assets = prepare_builtin(home=args.home, force=args.force, seed=args.seed)
    print(assets.model_dir)


if __name__ == "__main__":
    main()
