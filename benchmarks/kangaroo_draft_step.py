"""One Kangaroo draft step vs one full target step, side by side on the same model and cache.

Draft step: shallow layers [0, l) + adapter + LM head for one token (what each draft costs).
Target step: all layers + final norm + LM head for one token (what vanilla pays per token).
Both are timed alternately at the same context length; the report is the median of many
repeats and their ratio. Default model: the built-in one with its prepared adapter.

    .venv/bin/python benchmarks/kangaroo_draft_step.py [--model M --adapter A] [--context 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specbench_cli.engine.load import load_engine
from specbench_cli.models.targets import model_folder
from specbench_cli.methods.kangaroo import Kangaroo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--adapter")
    parser.add_argument("--exit-layer", type=int)
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    if args.model is None:
        from specbench_cli.models.builtin import prepare_builtin
        assets = prepare_builtin()
        args.model, args.adapter = str(assets.model_dir), str(assets.root / "kangaroo")
    engine, _, _ = load_engine(model_folder(args.model), dtype="fp32", device="cpu")
    k = Kangaroo(engine, set(), adapter=args.adapter, exit_layer=args.exit_layer)
    l, n = k.options["exit_layer"], engine.num_layers
    ctx = args.context
    cache = engine.cache(ctx + 8)
    adapter_cache = engine.new_cache(ctx + 8, 1)
    ids = torch.randint(3, engine.config.vocab_size, (1, ctx))
    one = ids[:, -1:]
    with torch.inference_mode():
        engine(ids, cache, 0)
        rope = engine.rope(torch.arange(ctx, device=engine.device))
        k.adapter(engine.layers(engine.embed(ids), 0, l, None, 0, rope=rope), rope,
                  adapter_cache, 0)

        def draft_step():
            h = engine.layers(engine.embed(one), 0, l, cache, ctx)
            a = k.adapter(h, engine.rope(torch.tensor([ctx])), adapter_cache, ctx)
            return engine.logits(a).argmax(-1)

        def target_step():
            return engine(one, cache, ctx).argmax(-1)

        times = {"draft": [], "target": []}
        for _ in range(args.repeats):
            for name, fn in (("draft", draft_step), ("target", target_step)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k_: statistics.median(v) * 1e3 for k_, v in times.items()}
    print(f"model {args.model}: {n} layers, exit layer {l}, adapter "
          f"{k.adapter.num_parameters():,} params; fp32 cpu, {torch.get_num_threads()} threads; "
          f"context {ctx}; median of {args.repeats}")
    print(f"  one draft step  (layers 0..{l - 1} + adapter + head): {med['draft']:.3f} ms")
    print(f"  one target step (all {n} layers + head):            {med['target']:.3f} ms")
    print(f"  ratio draft/target: {med['draft'] / med['target']:.3f}")


if __name__ == "__main__":
    main()
