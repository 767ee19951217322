"""EAGLE-3 draft-head training on a frozen target (Li et al., 2025; github.com/SafeAILab/EAGLE,
eagle/traineagle3: the losses, weights and vocabulary rule).

The draft vocabulary is the `draft_vocab` most frequent target tokens of the training answers.
Training-time test: the head is unrolled `ttt` steps over whole sequences. Step 0 reads the fused
target features f_t and the embedding of token t+1; step j reads its own step j-1 output at t and
the embedding of token t+1+j, and is scored against the target's distribution at t+1+j (the
token t+2+j), restricted to the draft vocabulary and renormalised, where the target's top token
is in that vocabulary. Loss Σ_j 0.8^j · soft-CE_j. So the head learns from inputs that are its
own predictions, as at inference, instead of from noised true features (EAGLE-1/2)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..drafters.eagle3 import Eagle3Head, eagle3_config, feature_layers, frequent_tokens
from ..engine import Engine
from ..errors import SpecbenchError
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .teacher import Batch, Distribution, LiveTeacher

STEP_DECAY = 0.8


def fused_features(engine: Engine, teacher: LiveTeacher, batch: Batch, layers) -> torch.Tensor:
    """[h_low, h_mid, h_high] (b, n, 3H) from the teacher; where a cached teacher does not hold
    these layers (a small test target), one live pass keeps all three."""
    try:
        parts = [teacher.hidden(batch, layer) for layer in layers]
    except KeyError:
        _, kept = engine.forward_keeping(batch.ids.to(engine.device), layers)
        parts = [kept[layer] for layer in layers]
    return torch.cat([p.to(engine.device).float() for p in parts], dim=-1)


def draft_targets(dist: Distribution, head: Eagle3Head) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's distributions over the draft vocabulary (m, Vd), renormalised, and which
    rows count (the target's top token is in the vocabulary)."""
    t2d = head.t2d.to(dist.probs.device)
    draft_of = torch.cumsum(t2d.long(), 0) - 1            # target id → draft id where kept
    if dist.ids is None:
        probs = dist.probs[:, t2d]
    else:
        kept = t2d[dist.ids]
        probs = torch.zeros(len(dist.probs), len(head.d2t), device=dist.probs.device)
        probs.scatter_add_(1, torch.where(kept, draft_of[dist.ids], 0),
                           torch.where(kept, dist.probs, 0.0))
    counts = t2d[dist.top1()]
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-9), counts


def eagle3_step(engine: Engine, head: Eagle3Head, teacher: LiveTeacher, ttt: int):
    def step(batch):
        ids, mask = batch.ids.to(engine.device), batch.mask.to(engine.device)
        b, n = ids.shape
        with torch.no_grad():
            features = fused_features(engine, teacher, batch, head.layers_used)
            embeds = F.pad(engine.embed(ids).float(), (0, 0, 0, ttt))      # room to shift
            probs, counts = draft_targets(teacher.distribution(batch), head)
        # Row of the teacher's distribution at each (sequence, position) that has one.
        row = torch.cumsum(mask.flatten().long(), 0).view(b, n) - 1
        hidden, past, loss, metrics = features, [], 0.0, {}
        hidden = head.fc(hidden)
        for j in range(ttt):
            if n <= 1 + j:
                break
            cos, sin = engine.rope(torch.arange(j, n + j, device=engine.device))
            hidden = head.midlayer.unrolled(embeds[:, 1 + j:1 + j + n], hidden, cos.float(),
                                            sin.float(), past)
            # Position t is scored where t+1+j is an answer token with its top token kept.
            label = torch.zeros_like(mask)
            label[:, :n - 1 - j] = mask[:, 1 + j:]
            rows = row[:, 1 + j:][label[:, :n - 1 - j]]
            keep = counts[rows]
            if not keep.any():
                continue
            logits = head.draft_logits(hidden[label][keep])
            target = probs[rows[keep]]
            ce = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
            loss = loss + STEP_DECAY ** j * ce
            metrics[f"top1_s{j}"] = float((logits.argmax(-1) == target.argmax(-1)).float().mean())
        if not torch.is_tensor(loss):
            loss = hidden.sum() * 0.0          # a batch without a single scored position
        return loss, metrics
    return step


def train_eagle3(engine: Engine, tokenizer, data: list[Path], out: Path, *, steps: int = 2000,
                 lr: float = 5e-5, warmup: int | None = None, batch_size: int = 8,
                 max_len: int = 512, draft_vocab: int = 32000, ttt: int = 7, seed: int = 0,
                 target_name: str = "", console=None, template: str = "vicuna_v1.1",
                 examples=None, teacher: LiveTeacher | None = None,
                 checkpoint_every: int = 100) -> dict:
    if draft_vocab < 1 or ttt < 1:
        raise SpecbenchError(f"draft_vocab and ttt must be at least 1 (got {draft_vocab}, {ttt})")
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    cfg = engine.config
    kept = frequent_tokens(examples, draft_vocab, cfg.vocab_size)
    layers = feature_layers(engine.num_layers)
    head = Eagle3Head(cfg, len(kept), layers).to(engine.device)
    head.set_vocab(kept.to(engine.device))
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, clip_norm=0.5,
                             warmup=warmup if warmup is not None else steps // 10,
                             checkpoint_every=checkpoint_every)
    metrics = train(head, eagle3_step(engine, head, teacher or LiveTeacher(engine), ttt),
                    batches(examples, batch_size, seed), settings, Path(out), console,
                    label="eagle-3 head")
    config = eagle3_config(cfg, len(kept), layers, {
        "target": target_name, "data_sha256": data_hash(data), "steps": steps, "lr": lr,
        "ttt": ttt, "template": template, "examples": len(examples), "final": metrics})
    finish(Path(out), head, config)
    return metrics
