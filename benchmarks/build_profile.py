"""Where `specbench prepare` spends its time: ms per training step of the built-in model and of
each add-on's trainer, in fp32 and under bf16 autocast, the add-ons with the live teacher (the
target's forward on every step) and with the cached one (one pass, then reads), plus the top
operators of one model step (torch profiler).

The model is the built-in recipe's, freshly initialised (a step's time does not depend on its
weights), over a few thousand generated conversations; nothing is cached or written outside a
temporary folder. Medians over --steps steps after two warm-up steps, side by side in one run.

    .venv/bin/python benchmarks/build_profile.py [--steps 20] [--conversations 2000] [--ops]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from specbench_cli.models.builtin.model import (answer_loss, collate, encode_conversations, make_batches,
                                         make_model, shared_prefix_len)
from specbench_cli.models.builtin.recipe import Recipe
from specbench_cli.models.builtin.tasks_gen import generate, train_records, write_jsonl
from specbench_cli.models.builtin.tokenizer import conversation_text, train_tokenizer
from specbench_cli.engine.kernels import cpu_name


def precisions():
    yield "fp32", contextlib.nullcontext
    yield "bf16 autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def median_ms(step, steps: int) -> float:
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def model_step(model, examples, recipe, pad_id, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(make_batches(examples, recipe.batch_size, 10_000, random.Random(0)))
    prefix = shared_prefix_len(examples)

    def step():
        ids, target = collate([examples[i] for i in next(batches)], pad_id)
        with autocast():
            loss = answer_loss(model, ids, target, prefix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def trainer_steps(folder: Path, train_file: Path, batch: int):
    """(name, make(teacher) → step) for each add-on trainer, as `specbench prepare` runs them."""
    from specbench_cli.engine.load import load_engine
    from specbench_cli.drafters.eagle import EagleHead
    from specbench_cli.drafters.kangaroo import Adapter, default_exit_layer
    from specbench_cli.drafters.medusa import make_heads
    from specbench_cli.train.data import batches, load_examples
    from specbench_cli.train.eagle import eagle_step
    from specbench_cli.train.kangaroo import kangaroo_step
    from specbench_cli.train.medusa import medusa_step
    from specbench_cli.train.sps import drafter_config, new_drafter, sps_step
    engine, tokenizer, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    engine.requires_grad_(False)
    cfg = engine.config
    examples = load_examples([train_file], tokenizer, 256)
    exit_layer = default_exit_layer(engine.num_layers)
    modules = {
        "kangaroo": lambda: Adapter(cfg),
        "medusa": lambda: make_heads(cfg.hidden_size, cfg.vocab_size, 4,
                                     engine.lm_head.weight.detach().float()),
        "eagle": lambda: EagleHead(cfg),
        "sps": lambda: new_drafter(drafter_config(cfg, 64, 1)),
    }
    makers = {
        "kangaroo": lambda m, t: kangaroo_step(engine, m, exit_layer, t),
        "medusa": lambda m, t: medusa_step(engine, m, t),
        "eagle": lambda m, t: eagle_step(engine, m, 0.2, torch.Generator().manual_seed(0), t),
        "sps": lambda m, t: sps_step(engine, m, t),
    }
    return engine, examples, exit_layer, modules, makers, lambda: batches(examples, batch, 0)


def timed_trainer(module, step_fn, data, autocast):
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with autocast():
            loss, _ = step_fn(next(data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ops", action="store_true", help="also the profiler's top operators")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe()
    small = replace(recipe, n_train=args.conversations)
    data = generate(recipe.seed, small.train_counts(), 5)
    tokenizer = train_tokenizer((conversation_text(c.turns, c.answers) for c in data.train),
                                recipe.vocab_size)
    examples = encode_conversations(tokenizer, [(c.turns, c.answers) for c in data.train])
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(examples)} conversations, median of {args.steps} steps (ms)")
    torch.manual_seed(0)
    model = make_model(recipe, tokenizer)
    for name, autocast in precisions():
        ms = median_ms(model_step(model, examples, recipe, tokenizer.pad_token_id, autocast),
                       args.steps)
        print(f"  model step (batch {recipe.batch_size}), {name}: {ms:.1f}")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        step = model_step(model, examples, recipe, tokenizer.pad_token_id, contextlib.nullcontext)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    from specbench_cli.train.teacher import CachedTeacher, LiveTeacher
    with tempfile.TemporaryDirectory() as tmp:
        folder, train_file = Path(tmp) / "model", Path(tmp) / "train.jsonl"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_jsonl(train_file, train_records(data.train))
        engine, ex, exit_layer, modules, makers, data_iter = trainer_steps(folder, train_file, 16)
        start = time.perf_counter()
        cached = CachedTeacher(engine, ex[:400], [exit_layer], top_k=32)
        per = 1e3 * (time.perf_counter() - start) / 400
        print(f"  cached teacher pass: {per:.2f} ms per conversation")
        # A cached teacher holds only the conversations it saw: batches over those.
        from specbench_cli.train.data import batches
        for name in modules:
            for teacher_name, teacher, data in (
                    ("live", LiveTeacher(engine), data_iter()),
                    ("cached", cached, batches(ex[:400], 16, 0))):
                for precision, autocast in precisions():
                    torch.manual_seed(0)
                    module = modules[name]()
                    ms = median_ms(timed_trainer(module, makers[name](module, teacher), data,
                                                 autocast), args.steps)
                    print(f"  {name} step (batch 16), {teacher_name} teacher, {precision}: "
                          f"{ms:.1f}")


if __name__ == "__main__":
    main()
