"""How long the engine takes: medians of a function on a device, and of one block's forward
after a context (what `specbench profile`, the cost model and `--dtype auto` measure)."""

from __future__ import annotations

import statistics
import time

import torch

from .batch import BatchEngine, run_batch
from .llama import Engine, sync


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def block_step(engine: Engine, n: int, context: int, cache=None, through=None):
    """A function running one forward over n new tokens after `context` committed ones (the
    context is prefilled once, here; each call truncates back to it). Call it in inference mode.
    `cache`: its own (default: the engine's shared one); `through`: the engine view the forward
    runs on (joined_block_step's)."""
    device = engine.device
    gen = torch.Generator().manual_seed(n * 7919 + context)
    vocab = engine.config.vocab_size
    cache = cache or engine.cache(context + n + 8)
    with torch.inference_mode():
        engine(torch.randint(vocab, (1, context), generator=gen).to(device), cache, 0)
        block = torch.randint(vocab, (1, n), generator=gen).to(device)

    def step():
        cache.truncate(context)
        (through or engine)(block, cache, context)
    return step


def joined_block_step(engine: Engine, sequences: int, n: int, context: int):
    """A function running one joined forward of `sequences` sequences, each with n new tokens
    after its own `context` committed ones: their rows go through every product together,
    attention per sequence (engine/batch.py), as a batch of that size verifies its blocks."""
    view = BatchEngine(engine)
    steps = [block_step(engine, n, context, engine.new_cache(context + n + 8), view)
             for _ in range(sequences)]
    return lambda: run_batch(engine, steps)


def block_latency(engine: Engine, n: int, context: int, repeats: int) -> float:
    """Median seconds of one forward over n new tokens after `context` committed ones."""
    step = block_step(engine, n, context)
    with torch.inference_mode():
        return median_seconds(step, engine.device, repeats)
