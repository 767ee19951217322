"""Medusa head training and calibration on a frozen target (METHODS.md §3).

Training: head k at position t learns token t+2+k; loss Σ 0.8^k · CE_k on assistant tokens.
Calibration: each head's top-k accuracy on held-out conversations, the input of the greedy tree
construction (`methods.medusa.grow_tree`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Engine
from ..errors import SpecbenchError
from ..methods.medusa import TOP_K, grow_tree, make_heads
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train

DECAY = 0.8


def final_hidden(engine: Engine, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        h = engine.layers(engine.embed(ids), 0, engine.num_layers, None, 0)
        return engine.norm(h)


def shifted(heads, hidden, ids, mask):
    """Per head k: (logits at positions t, labels ids[t+2+k]) where the label is an assistant
    token."""
    for k, head in enumerate(heads):
        shift = 2 + k
        if ids.shape[1] <= shift:
            continue
        valid = mask[:, shift:]
        yield k, head(hidden[:, :-shift][valid]).float(), ids[:, shift:][valid]


def medusa_step(engine: Engine, heads):
    def step(batch):
        ids, mask = (t.to(engine.device) for t in batch)
        hidden = final_hidden(engine, ids)
        loss, metrics = 0.0, {}
        for k, logits, labels in shifted(heads, hidden, ids, mask):
            loss = loss + DECAY ** k * F.cross_entropy(logits, labels)
            metrics[f"top1_h{k}"] = float((logits.argmax(-1) == labels).float().mean())
        return loss, metrics
    return step


def train_medusa(engine: Engine, tokenizer, data: list[Path], out: Path, *, num_heads: int = 4,
                 steps: int = 2000, lr: float = 1e-3, warmup: int | None = None,
                 batch_size: int = 8, max_len: int = 512, seed: int = 0, target_name: str = "",
                 console=None) -> dict:
    if num_heads < 1:
        raise SpecbenchError(f"num_heads must be at least 1 (got {num_heads})")
    examples = load_examples(data, tokenizer, max_len)
    torch.manual_seed(seed)
    cfg = engine.config
    heads = make_heads(cfg.hidden_size, cfg.vocab_size, num_heads,
                       engine.lm_head.weight.detach().float()).to(engine.device)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, warmup=warmup if warmup is not None else
                             steps // 10, clip_norm=1.0)
    metrics = train(heads, medusa_step(engine, heads), batches(examples, batch_size, seed),
                    settings, out, console, label="medusa heads")
    finish(out, heads, {"medusa_num_heads": num_heads, "hidden_size": cfg.hidden_size,
                        "vocab_size": cfg.vocab_size, "base_model_name_or_path": target_name,
                        "specbench": {"data_sha256": data_hash(data), "steps": steps, "lr": lr,
                                      "final": metrics}},
           weights="medusa_lm_head.safetensors")
    return metrics


def calibrate(engine: Engine, tokenizer, heads, data: list[Path], out: Path | None = None,
              max_examples: int = 200, max_len: int = 512) -> dict:
    """accuracy[k][r]: share of assistant positions where head k's rank-r candidate is the
    token 2+k ahead. Stored as calibration.json in `out` (the heads' folder) when given."""
    examples = load_examples(data, tokenizer, max_len)[:max_examples]
    hits = torch.zeros(len(heads), TOP_K)
    counts = torch.zeros(len(heads))
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex.ids], device=engine.device)
            mask = torch.tensor([ex.assistant], device=engine.device)
            for k, logits, labels in shifted(heads, final_hidden(engine, ids), ids, mask):
                ranks = logits.topk(TOP_K, dim=-1).indices
                hits[k] += (ranks == labels[:, None]).float().sum(0).cpu()
                counts[k] += labels.numel()
    accuracy = (hits / counts.clamp(min=1)[:, None]).tolist()
    result = {"accuracy": accuracy, "positions": counts.tolist(),
              "trees": {str(b): grow_tree(accuracy, b) for b in (16, 32, 64)}}
    if out is not None:
        (Path(out) / "calibration.json").write_text(json.dumps(result))
    return result
