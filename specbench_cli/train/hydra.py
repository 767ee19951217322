"""Hydra head training on a frozen target (Ankner et al., 2024): head k at position t reads the
target's hidden state h_t and the embeddings of the true tokens t+1 … t+1+k (teacher forcing,
as upstream trains them) and learns token t+2+k; loss Σ 0.8^k · CE_k on assistant tokens, as
Medusa's. Trees are then grown from each head's measured top-k accuracy (train.medusa). With
`arch="prefix-mlp"` (Hydra++) the heads read the output of their own decoder layer over the
hidden states (causal over each training sequence), trained with them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..drafters.hydra import ARCHS, HydraHeads, load_hydra
from ..engine import Engine
from ..errors import SpecbenchError
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .medusa import CALIBRATION_EXAMPLES, calibrate, medusa_step
from .teacher import LiveTeacher


def head_inputs(hidden: torch.Tensor, embeds: torch.Tensor, k: int) -> torch.Tensor:
    """[h_t, e_{t+1}, …, e_{t+1+k}] for every t with a label t+2+k: (B, L-2-k, H·(k+2))."""
    n = hidden.shape[1] - 2 - k
    return torch.cat([hidden[:, :n]] + [embeds[:, 1 + j:1 + j + n] for j in range(k + 1)], -1)


def sequential(engine: Engine):
    """Each head's (logits, labels) over assistant labels, for `calibrate` and training."""
    def head_logits(heads, hidden, ids, mask):
        hidden, embeds = hidden.float(), engine.embed(ids).float()
        if heads.prefix_embeding_layer is not None:
            cos, sin = engine.rope(torch.arange(hidden.shape[1], device=hidden.device))
            hidden = heads.prefix_embeding_layer(hidden, (cos.float(), sin.float()))
        for k in range(len(heads)):
            if ids.shape[1] <= 2 + k:
                continue
            valid = mask[:, 2 + k:]
            yield k, heads(k, head_inputs(hidden, embeds, k)[valid]).float(), \
                ids[:, 2 + k:][valid]
    return head_logits


def train_hydra(engine: Engine, tokenizer, data: list[Path], out: Path, *, num_heads: int = 4,
                num_layers: int = 1, arch: str = "mlp", steps: int = 2000, lr: float = 1e-3,
                warmup: int | None = None, batch_size: int = 8, max_len: int = 512,
                seed: int = 0, target_name: str = "", share_lm_head: bool = False, console=None,
                template: str = "vicuna_v1.1", examples=None,
                teacher: LiveTeacher | None = None, checkpoint_every: int = 100) -> dict:
    """`share_lm_head`: heads end in the target's own LM head instead of a vocab projection
    each (small targets)."""
    if num_heads < 1 or num_layers < 1:
        raise SpecbenchError(f"num_heads and num_layers must be at least 1 (got {num_heads}, "
                             f"{num_layers})")
    if arch not in ARCHS:
        raise SpecbenchError(f"arch must be one of {', '.join(ARCHS)} (got {arch!r})")
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    cfg = engine.config
    heads = HydraHeads(cfg.hidden_size, cfg.vocab_size, num_heads, num_layers,
                       shared=engine.lm_head if share_lm_head else None,
                       lm_head=engine.lm_head.weight.detach().float(),
                       prefix=engine.config if arch == "prefix-mlp" else None).to(engine.device)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, warmup=warmup if warmup is not None else
                             steps // 10, clip_norm=1.0, checkpoint_every=checkpoint_every)
    metrics = train(heads, medusa_step(engine, heads, teacher or LiveTeacher(engine),
                                               sequential(engine)),
                    batches(examples, batch_size, seed), settings, out, console,
                    label="hydra heads")
    finish(out, heads, {"hydra_num_heads": num_heads, "hydra_num_layers": num_layers,
                        "hydra_head_arch": arch, "grounded_heads": True,
                        "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
                        "base_model_name_or_path": target_name, "shared_lm_head": share_lm_head,
                        "specbench": {"data_sha256": data_hash(data), "steps": steps, "lr": lr,
                                      "template": template, "final": metrics}},
           weights="hydra_lm_head.safetensors")
    return metrics


def build_builtin_hydra(engine, tokenizer, data, folder, settings, console, **shared):
    """Train the heads, then grow their trees from each head's accuracy on the same corpus."""
    train_hydra(engine, tokenizer, data, folder, console=console,
                target_name=shared.pop("target_name", "builtin"), **settings, **shared)
    heads = load_hydra(folder, engine.config, engine.lm_head)
    calibrate(engine, tokenizer, heads, data, folder, max_examples=CALIBRATION_EXAMPLES,
              head_logits=sequential(engine), **shared)
