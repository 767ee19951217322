"""EAGLE draft-head training on a frozen target (Li et al., 2024, "EAGLE: Speculative Sampling
Requires Rethinking Feature Uncertainty"; github.com/SafeAILab/EAGLE: the official recipe's
losses, weights and noise).

The target's final normed features are the data. At position t the head reads f_t and the
embedding of token t+1 and regresses f_{t+1}: smooth L1, weight 1.0. The target's LM head over
the prediction is pulled towards the target's own next-token distribution: soft cross-entropy,
weight 0.1. Input features get uniform noise of width 0.2·512/n (n: the sequence length), so
the head learns to draft from its own slightly-off predictions. Gradients are clipped by value
(0.5); AdamW with betas 0.9/0.95."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Engine
from ..drafters.eagle import EagleHead, head_config
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .teacher import LiveTeacher

FEATURE_WEIGHT, DISTRIBUTION_WEIGHT = 1.0, 0.1
NOISE = 0.2


def eagle_step(engine: Engine, head: EagleHead, noise: float, generator: torch.Generator,
               teacher: LiveTeacher):
    def step(batch):
        ids, mask = batch.ids.to(engine.device), batch.mask.to(engine.device)
        n = ids.shape[1]
        features = teacher.features(batch).to(engine.device)
        # The next-token distribution at every assistant position t+1 (position 0 never is one).
        target = teacher.distribution(batch)
        with torch.no_grad():
            embeds = engine.embed(ids[:, 1:])
        inputs = features[:, :-1]
        if noise:
            width = noise * 512 / n
            jitter = torch.rand(inputs.shape, generator=generator) - 0.5
            inputs = inputs + jitter.to(inputs) * width
        rope = engine.rope(torch.arange(n - 1, device=engine.device))
        predicted = head(inputs, embeds, rope, None, 0)
        keep = mask[:, 1:]                  # the token after t+1 is an assistant token
        feature_loss = F.smooth_l1_loss(predicted[keep], features[:, 1:][keep])
        draft = engine.logits(predicted[keep])
        distribution_loss = target.soft_cross_entropy(draft)
        loss = FEATURE_WEIGHT * feature_loss + DISTRIBUTION_WEIGHT * distribution_loss
        return loss, {"feature": feature_loss.item(), "ce": distribution_loss.item(),
                      "top1": target.agreement(draft)}
    return step


def train_eagle(engine: Engine, tokenizer, data: list[Path], out: Path, *, steps: int = 2000,
                lr: float = 3e-4, warmup: int | None = None, batch_size: int = 8,
                max_len: int = 512, noise: float = NOISE, seed: int = 0, target_name: str = "",
                console=None, template: str = "vicuna_v1.1", examples=None,
                teacher: LiveTeacher | None = None, checkpoint_every: int = 100) -> dict:
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    head = EagleHead(engine.config).to(engine.device)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, clip_value=0.5,
                             warmup=warmup if warmup is not None else min(2000, steps // 10),
                             checkpoint_every=checkpoint_every)
    generator = torch.Generator().manual_seed(seed)
    metrics = train(head, eagle_step(engine, head, noise, generator,
                                     teacher or LiveTeacher(engine)),
                    batches(examples, batch_size, seed), settings, Path(out), console,
                    label="eagle head")
    config = head_config(engine.config, {"target": target_name, "data_sha256": data_hash(data),
                                         "steps": steps, "lr": lr, "noise": noise,
                                         "template": template, "examples": len(examples),
                                         "final": metrics})
    finish(Path(out), head, config)
    return metrics
