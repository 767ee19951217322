"""Medusa head training and calibration on a frozen target (Cai et al., 2024, "Medusa: Simple
LLM Inference Acceleration Framework with Multiple Decoding Heads", Medusa-1 recipe).

Training: head k at position t learns token t+2+k; loss Σ 0.8^k · CE_k on assistant tokens.
Calibration: each head's top-k accuracy on held-out conversations, the input of the greedy tree
construction (`drafters.medusa.grow_tree`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Engine
from ..errors import SpecbenchError
from ..files import atomic_write
from ..drafters.medusa import TOP_K, grow_tree, load_heads, make_heads
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .teacher import Batch, LiveTeacher

DECAY = 0.8
CALIBRATION_EXAMPLES = 300      # conversations the built-in heads are calibrated on


def shifted(heads, hidden, ids, mask):
    """Per head k: (logits at positions t, labels ids[t+2+k]) where the label is an assistant
    token."""
    for k, head in enumerate(heads):
        shift = 2 + k
        if ids.shape[1] <= shift:
            continue
        valid = mask[:, shift:]
        yield k, head(hidden[:, :-shift][valid]).float(), ids[:, shift:][valid]


def medusa_step(engine: Engine, heads, teacher: LiveTeacher, head_logits=shifted):
    """One loss over every head; `head_logits` yields each head's (k, logits, labels)."""
    def step(batch):
        ids, mask = batch.ids.to(engine.device), batch.mask.to(engine.device)
        hidden = teacher.features(batch).to(engine.device)
        loss, metrics = 0.0, {}
        for k, logits, labels in head_logits(heads, hidden, ids, mask):
            loss = loss + DECAY ** k * F.cross_entropy(logits, labels)
            metrics[f"top1_h{k}"] = float((logits.argmax(-1) == labels).float().mean())
        return loss, metrics
    return step


def train_medusa(engine: Engine, tokenizer, data: list[Path], out: Path, *, num_heads: int = 4,
                 steps: int = 2000, lr: float = 1e-3, warmup: int | None = None,
                 batch_size: int = 8, max_len: int = 512, seed: int = 0, target_name: str = "",
                 share_lm_head: bool = False, console=None, template: str = "vicuna_v1.1",
                 examples=None, teacher: LiveTeacher | None = None,
                 checkpoint_every: int = 100) -> dict:
    """`share_lm_head`: heads are ResBlocks over the target's own LM head (methods.medusa.
    SharedLMHead) instead of owning a vocab projection each."""
    if num_heads < 1:
        raise SpecbenchError(f"num_heads must be at least 1 (got {num_heads})")
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    cfg = engine.config
    heads = make_heads(cfg.hidden_size, cfg.vocab_size, num_heads,
                       engine.lm_head.weight.detach().float(),
                       shared=engine.lm_head if share_lm_head else None).to(engine.device)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, warmup=warmup if warmup is not None else
                             steps // 10, clip_norm=1.0, checkpoint_every=checkpoint_every)
    metrics = train(heads, medusa_step(engine, heads, teacher or LiveTeacher(engine)),
                    batches(examples, batch_size, seed), settings, out, console,
                    label="medusa heads")
    finish(out, heads, {"medusa_num_heads": num_heads, "hidden_size": cfg.hidden_size,
                        "vocab_size": cfg.vocab_size, "base_model_name_or_path": target_name,
                        "shared_lm_head": share_lm_head,
                        "specbench": {"data_sha256": data_hash(data), "steps": steps, "lr": lr,
                                      "template": template, "final": metrics}},
           weights="medusa_lm_head.safetensors")
    return metrics


def calibrate(engine: Engine, tokenizer, heads, data: list[Path], out: Path | None = None,
              max_examples: int = 200, max_len: int = 512, template: str = "vicuna_v1.1",
              examples=None, teacher: LiveTeacher | None = None, head_logits=shifted) -> dict:
    """accuracy[k][r]: share of assistant positions where head k's rank-r candidate is the
    token 2+k ahead (`head_logits(heads, hidden, ids, mask)` yields each head's logits and
    labels: Medusa's, or Hydra's that also read the tokens before). Stored as calibration.json
    in `out` (the heads' folder) when given."""
    examples = (examples or load_examples(data, tokenizer, max_len, template))[:max_examples]
    teacher = teacher or LiveTeacher(engine)
    hits = torch.zeros(len(heads), TOP_K)
    counts = torch.zeros(len(heads))
    with torch.no_grad():
        for row, ex in enumerate(examples):
            batch = Batch(torch.tensor([ex.ids]), torch.tensor([ex.assistant]), [row])
            ids, mask = batch.ids.to(engine.device), batch.mask.to(engine.device)
            hidden = teacher.features(batch).to(engine.device)
            for k, logits, labels in head_logits(heads, hidden, ids, mask):
                ranks = logits.topk(TOP_K, dim=-1).indices
                hits[k] += (ranks == labels[:, None]).float().sum(0).cpu()
                counts[k] += labels.numel()
    accuracy = (hits / counts.clamp(min=1)[:, None]).tolist()
    result = {"accuracy": accuracy, "positions": counts.tolist(),
              "trees": {str(b): grow_tree(accuracy, b) for b in (16, 32, 64)}}
    if out is not None:
        atomic_write(Path(out) / "calibration.json", json.dumps(result))
    return result


def build_builtin_heads(engine, tokenizer, data, folder, settings, console, **shared):
    """Train the heads, then calibrate their trees on the same corpus (`shared`: a template,
    examples and a teacher the add-ons of one target share, train.teacher)."""
    train_medusa(engine, tokenizer, data, folder, console=console,
                 target_name=shared.pop("target_name", "builtin"), **settings, **shared)
    heads = load_heads(folder, engine.config.hidden_size, engine.config.vocab_size,
                       engine.lm_head)
    calibrate(engine, tokenizer, heads, data, folder, max_examples=CALIBRATION_EXAMPLES,
              **shared)
