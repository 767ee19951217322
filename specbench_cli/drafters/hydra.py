"""Hydra heads (Ankner et al., 2024, "Hydra: Sequentially-Dependent Draft Heads for Medusa
Decoding"): Medusa's heads made sequentially dependent. Head k reads the target's last hidden
state h_t and the embeddings of the tokens drafted before it, [h_t, e(x_{t+1}), …,
e(x_{t+1+k})], and predicts token t+2+k; so within a tree each node's children come from its
own path, not only from its depth. The "prefix-mlp" variant (the paper's Hydra++ heads) first
runs the hidden states through one extra decoder layer of the target's shape with its own KV
cache (the "prefix embedding layer": attention over every committed position, then a final
norm) and feeds its output to the heads in place of h_t. A strict loader for ours and the
official `hydra_lm_head.pt` + config.json (grounded "mlp" and "prefix-mlp" heads; key names
from the public code).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine import EngineConfig
from ..engine.llama import DecoderLayer, RMSNorm
from ..engine.load import load_state
from ..errors import SpecbenchError
from .addon_folder import read_config
from .medusa import ResBlock, SharedLMHead

WEIGHTS = ("hydra_lm_head.safetensors", "hydra_lm_head.pt")
ARCHS = ("mlp", "prefix-mlp")
# Upstream's prefix layer is a one-layer Llama model: its embedding table (never used: it reads
# hidden states) and rotary buffers are in the checkpoint but not loaded.
UNUSED = ("prefix_embeding_layer.embed_tokens.", "rotary_emb.inv_freq")


class HydraError(SpecbenchError):
    pass


class PrefixLayer(nn.Module):
    """Hydra++'s prefix embedding layer: a decoder layer of the target's shape over the
    target's hidden states, then a norm (upstream's one-layer LlamaModel; same key names)."""

    def __init__(self, target: EngineConfig):
        super().__init__()
        cfg = EngineConfig(**{**target.__dict__, "num_layers": 1})
        self.layers = nn.ModuleList([DecoderLayer(cfg)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, hidden, rope, cache=None, offset=0, mask=None):
        """hidden (b, n, H) → (b, n, H); keys/values to `cache` rows [offset, offset + n)
        (no cache: causal attention over the block, for training)."""
        cos, sin = rope
        return self.norm(self.layers[0](hidden, cos, sin, cache, 0, offset, mask))


class HydraHeads(nn.Module):
    """`hydra_mlp[k]`: ResBlock over k+2 vectors, then `num_layers - 1` plain ResBlocks;
    `hydra_lm_head[k]`: a vocab projection (with bias, as upstream's), or the target's LM head
    when `shared` is given. The odd indices of both mirror the official layout, whose even
    slots hold dropouts (identities here), so official keys load as they are. `prefix` (the
    target's config) adds the prefix-mlp variant's layer, `prefix_embeding_layer` (sic)."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int = 1,
                 shared: nn.Module | None = None, lm_head: torch.Tensor | None = None,
                 prefix: EngineConfig | None = None):
        super().__init__()
        self.prefix_embeding_layer = PrefixLayer(prefix) if prefix is not None else None
        def blocks(k):
            layers = [nn.Identity(), ResBlock(hidden, k + 2)]
            for _ in range(num_layers - 1):
                layers += [nn.Identity(), ResBlock(hidden)]
            return nn.Sequential(*layers)
        self.hydra_mlp = nn.ModuleList(blocks(k) for k in range(num_heads))
        self.hydra_lm_head = nn.ModuleList(
            nn.Sequential(nn.Identity(), SharedLMHead(shared) if shared is not None
                          else nn.Linear(hidden, vocab)) for _ in range(num_heads))
        if lm_head is not None and shared is None:
            with torch.no_grad():
                for head in self.hydra_lm_head:
                    head[1].weight.copy_(lm_head)
                    head[1].bias.zero_()
        self.num_layers = num_layers

    def __len__(self) -> int:
        return len(self.hydra_mlp)

    def keep(self, num_heads: int) -> "HydraHeads":
        """The first `num_heads` heads only."""
        self.hydra_mlp = self.hydra_mlp[:num_heads]
        self.hydra_lm_head = self.hydra_lm_head[:num_heads]
        return self

    def forward(self, k: int, inputs: torch.Tensor) -> torch.Tensor:
        """Head k's logits from [h, e_1, …, e_{k+1}] concatenated on the last axis."""
        return self.hydra_lm_head[k](self.hydra_mlp[k](inputs))


# What the loader reads of config.json (the official names; `shared_lm_head` is ours).
CONFIG_FIELDS = {"hydra_num_heads": int, "hydra_num_layers?": int, "hydra_head_arch?": str,
                 "grounded_heads?": bool, "shared_lm_head?": bool}


def weights_file(folder: Path) -> Path:
    found = [folder / n for n in WEIGHTS if (folder / n).is_file()]
    if not found:
        raise HydraError(f"Hydra heads {folder}: no {' or '.join(WEIGHTS)}")
    return found[0]


def load_hydra(folder: Path, target: EngineConfig, lm_head: nn.Module) -> HydraHeads:
    """Heads from a folder holding config.json and the weights, checked strictly. Official
    configs say `hydra_num_heads`, `hydra_num_layers`, `hydra_head_arch` and `grounded_heads`;
    grounded "mlp" and "prefix-mlp" heads are Hydra's sequentially dependent ones this method
    runs (upstream's "cross-attn" and "eagle-attn" experiments are not)."""
    hidden, vocab = target.hidden_size, target.vocab_size
    folder = Path(folder)
    if not folder.is_dir():
        raise HydraError(f"Hydra heads {folder}: not a folder (config.json + hydra_lm_head.pt)")
    cfg = read_config(folder, "Hydra heads", HydraError, CONFIG_FIELDS)
    arch, grounded = cfg.get("hydra_head_arch", "mlp"), cfg.get("grounded_heads", True)
    if arch not in ARCHS or not grounded:
        kind = f"{arch!r} heads{'' if grounded else ' (not grounded)'}"
        raise HydraError(f"Hydra heads {folder}: {kind}"
                         " are not supported; this method runs grounded 'mlp' and 'prefix-mlp' "
                         "heads")
    if cfg["hydra_num_heads"] < 1 or cfg.get("hydra_num_layers", 1) < 1:
        raise HydraError(f"{folder / 'config.json'}: hydra_num_heads and hydra_num_layers must "
                         "be positive integers")
    path = weights_file(folder)
    shared = cfg.get("shared_lm_head", False)
    heads = HydraHeads(hidden, vocab, cfg["hydra_num_heads"], cfg.get("hydra_num_layers", 1),
                       shared=lm_head if shared else None,
                       prefix=target if arch == "prefix-mlp" else None)
    load_state(heads, [path], f"Hydra heads {path} do not fit the model", HydraError,
               hint=f" (hidden {hidden}, vocabulary {vocab})",
               skip=lambda name: name.startswith(UNUSED[0]) or name.endswith(UNUSED[1]))
    return heads
