"""Kangaroo adapter training: the frozen target's full next-token distribution is the teacher;
the adapter on top of the shallow layers (through the target's LM head) is the student; loss is
soft cross-entropy on assistant tokens (Liu et al., 2024, "Kangaroo: Lossless Self-Speculative
Decoding via Double Early Exiting"; github.com/Equationliu/Kangaroo)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine import Engine
from ..errors import SpecbenchError
from ..drafters.kangaroo import Adapter, adapter_config, default_exit_layer
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .teacher import LiveTeacher


LOSSES = ("ce", "acceptance")


def kangaroo_step(engine: Engine, adapter: Adapter, exit_layer: int, teacher: LiveTeacher,
                  loss: str = "ce"):
    """`ce`: soft cross-entropy against the target's distribution (the paper's). `acceptance`:
    1 − Σ_v min(p_v, q_v), the expected rejection of a draft sampled from the adapter, which
    the paper finds converges more slowly (its appendix; `benchmarks/kangaroo_claims.py`)."""
    def step(batch):
        mask = batch.mask.to(engine.device)
        shallow = teacher.hidden(batch, exit_layer).to(engine.device)
        target = teacher.distribution(batch)
        rope = engine.rope(torch.arange(shallow.shape[1], device=engine.device))
        student = engine.logits(adapter(shallow, rope, None, 0)[mask])
        accept = target.acceptance(student)
        value = target.soft_cross_entropy(student) if loss == "ce" else 1 - accept
        return value, {"top1_agree": target.agreement(student), "accept": accept.item()}
    return step


def train_kangaroo(engine: Engine, tokenizer, data: list[Path], out: Path, *,
                   exit_layer: int | None = None, steps: int = 2000, lr: float = 5e-5,
                   warmup: int | None = None, batch_size: int = 8, max_len: int = 512,
                   seed: int = 0, target_name: str = "", console=None,
                   template: str = "vicuna_v1.1", loss: str = "ce", examples=None,
                   teacher: LiveTeacher | None = None, checkpoint_every: int = 100) -> dict:
    """`examples` and `teacher` (train.teacher) when several add-ons share one corpus pass."""
    exit_layer = exit_layer or default_exit_layer(engine.num_layers)
    if not 1 <= exit_layer < engine.num_layers:
        raise SpecbenchError(f"exit layer must be in [1, {engine.num_layers - 1}] (got {exit_layer})")
    if loss not in LOSSES:
        raise SpecbenchError(f"loss {loss!r}: choose one of {', '.join(LOSSES)}")
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    adapter = Adapter(engine.config).to(engine.device)
    init_from_target(adapter, engine, exit_layer)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, warmup=warmup if warmup is not None else
                             min(2000, steps // 10), clip_value=0.5,
                             checkpoint_every=checkpoint_every)
    metrics = train(adapter, kangaroo_step(engine, adapter, exit_layer,
                                           teacher or LiveTeacher(engine), loss),
                    batches(examples, batch_size, seed), settings, out, console,
                    label="kangaroo adapter")
    config = adapter_config(engine.config, exit_layer, {
        "target": target_name, "data_sha256": data_hash(data), "steps": steps, "lr": lr,
        "loss": loss, "template": template, "examples": len(examples), "final": metrics})
    finish(out, adapter, config)
    return metrics


def init_from_target(adapter: Adapter, engine: Engine, exit_layer: int):
    """Start from the target's layer `exit_layer` attention and its final norm: a far better
    starting point than random for a student that must mimic the deep layers' output."""
    src = engine.model.layers[exit_layer]
    dst = adapter.layers[0]
    with torch.no_grad():
        dst.input_layernorm.weight.copy_(src.input_layernorm.weight)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(dst.self_attn, name).weight.copy_(getattr(src.self_attn, name).weight)
        adapter.norm.weight.copy_(engine.model.norm.weight)
