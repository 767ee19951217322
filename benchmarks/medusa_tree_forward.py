"""Tree verification forward (64, 32 and 16 tree tokens) vs a one-token forward, side by side.

Same model, same cache, same context length: each repeat times a one-token decoding forward and
the verification forward of the preset trees (mask + positions as Medusa uses them), alternately.
The report is the median of the repeats and the ratio to the one-token forward: what one Medusa
step costs in units of a vanilla step. Default model: the built-in one.

    .venv/bin/python benchmarks/medusa_tree_forward.py [--model M] [--context 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.drafters.medusa import load_tree
from specbench_cli.methods.verify import Tree


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if args.model is None:
        from specbench_cli.models.builtin import prepare_builtin
        args.model = str(prepare_builtin().model_dir)
    engine, _, _ = load_engine(model_folder(args.model), dtype="fp32", device="cpu")
    ctx = args.context
    trees = {name: Tree.from_choices(load_tree(name, 4)) for name in ("budget64", "budget32", "budget16")}
    cache = engine.cache(ctx + 80)
    ids = torch.randint(3, engine.config.vocab_size, (1, ctx + 64))
    times = {"1 token": [], **{f"tree {len(t)}": [] for t in trees.values()}}
    with torch.inference_mode():
        engine(ids[:, :ctx], cache, 0)

        def one():
            engine(ids[:, ctx:ctx + 1], cache, ctx)

        def tree_forward(tree):
            depths = torch.tensor(tree.depths)
            engine(ids[:, ctx:ctx + len(tree)], cache, ctx, positions=ctx + depths,
                   block_mask=tree.mask)

        for _ in range(args.repeats):
            for name, fn in [("1 token", one)] + [(f"tree {len(t)}", lambda t=t: tree_forward(t))
                                                  for t in trees.values()]:
                cache.truncate(ctx)
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"model {args.model}: {engine.num_parameters() / 1e6:.2f}M params, fp32 cpu, "
          f"{torch.get_num_threads()} threads, context {ctx}, median of {args.repeats}")
    for name, ms in med.items():
        print(f"  {name:>8} forward: {ms:.3f} ms  ({ms / med['1 token']:.2f}x the one-token forward)")


if __name__ == "__main__":
    main()
