"""The EAGLE draft head (Li et al., 2024, "EAGLE: Speculative Sampling Requires Rethinking
Feature Uncertainty"): an FC over [next token's embedding, target feature] and one Llama
decoder layer that predicts the target's next top-layer feature; its config and a strict
loader for ours and the official EAGLE-1/2 checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engine import EngineConfig
from ..engine.llama import DecoderLayer, Linear
from ..engine.load import checkpoint_tensors, load_state
from ..errors import SpecbenchError
from ..models.targets import model_folder
from .addon_folder import read_config

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The official checkpoints carry a copy of the target's embedding table (frozen in training);
# the head embeds with the target's own table instead, so that copy is checked, never loaded.
EMBEDDING_KEY = "embed_tokens.weight"
EAGLE3_KEYS = ("d2t", "t2d", "midlayer.")


class EagleError(SpecbenchError):
    pass


def head_layer(cfg: EngineConfig, index: int) -> DecoderLayer:
    """A Llama decoder layer; the first one has no input norm (its input is the FC's output, as
    in the official head, whose checkpoints have no such weight), later ones have."""
    layer = DecoderLayer(cfg)
    if index == 0:
        layer.input_layernorm = nn.Identity()
    return layer


class EagleHead(nn.Module):
    """fc (2H → H, bias) → decoder layer(s). Parameter names are the official checkpoint's."""

    def __init__(self, target: EngineConfig, num_layers: int = 1, fc_bias: bool = True,
                 qkv_bias: bool = False):
        super().__init__()
        cfg = EngineConfig(**{**target.__dict__, "qkv_bias": qkv_bias, "o_bias": False,
                              "mlp_bias": False, "num_layers": num_layers})
        self.config = cfg
        self.fc = Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=fc_bias)
        self.layers = nn.ModuleList(head_layer(cfg, i) for i in range(num_layers))

    def forward(self, features, embeds, rope, cache, offset, mask=None):
        """features, embeds (b, n, H) → predicted next features (b, n, H); keys/values go to
        `cache` rows [offset, offset + n) (no cache: causal attention over the block)."""
        x = self.fc(torch.cat((embeds, features), dim=-1))
        cos, sin = rope
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, offset, mask)
        return x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# What the loaders read of config.json (EAGLE-1/2's and EAGLE-3's; official ones hold these or
# fewer, with these types).
CONFIG_FIELDS = {"hidden_size?": int, "vocab_size?": int, "num_hidden_layers?": int,
                 "bias?": bool, "qkv_bias?": bool, "draft_vocab_size?": int,
                 "target_hidden_size?": int, "specbench?": dict}


def head_config(target: EngineConfig, extra: dict | None = None, num_layers: int = 1) -> dict:
    """The official config.json shape (a one-layer LlamaConfig with `bias` for the FC)."""
    return {"model_type": "llama", "architectures": ["EagleHead"], "bias": True,
            "hidden_size": target.hidden_size, "num_hidden_layers": num_layers,
            "num_attention_heads": target.num_heads, "num_key_value_heads": target.num_kv_heads,
            "head_dim": target.head_dim, "vocab_size": target.vocab_size,
            "intermediate_size": target.intermediate_size, "rms_norm_eps": target.rms_norm_eps,
            "rope_theta": target.rope_theta, "rope_scaling": target.rope_scaling,
            "specbench": {"target_num_layers": target.num_layers, **(extra or {})}}


def head_folder(spec: str) -> Path:
    """A local folder as is; 'org/name' (e.g. yuhuili/EAGLE-Vicuna-7B-v1.3) from the hub."""
    local = Path(spec).expanduser()
    if local.exists():
        return local
    return model_folder(spec, extra_patterns=("pytorch_model.bin",))


def load_head(spec: str, target: EngineConfig) -> tuple[EagleHead, dict, Path]:
    """An EAGLE-1/2 head folder (ours: model.safetensors; official: pytorch_model.bin, read with
    weights_only) with strict key, shape and model checks."""
    folder = head_folder(spec)
    cfg = read_config(folder, "EAGLE head", EagleError, CONFIG_FIELDS)
    files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not files:
        raise EagleError(f"EAGLE head {folder}: no {' or '.join(WEIGHT_FILES)}")
    names = {name: shape for name, shape, _ in checkpoint_tensors(files[0], mmap=True)}
    if "draft_vocab_size" in cfg or any(n.startswith(EAGLE3_KEYS) for n in names):
        raise EagleError(f"EAGLE head {folder} is an EAGLE-3 head (fused low/mid/high "
                         "features, a reduced draft vocabulary): run it with the eagle3 method")
    for key, want in (("hidden_size", target.hidden_size), ("vocab_size", target.vocab_size)):
        if cfg.get(key) not in (None, want):
            raise EagleError(f"EAGLE head {folder} was made for another model: {key} "
                             f"{cfg[key]}, the target has {want}")
    embedding = names.get(EMBEDDING_KEY)
    if embedding not in (None, (target.vocab_size, target.hidden_size)):
        raise EagleError(f"EAGLE head {folder}: its embedding table is {embedding}, the "
                         f"target's is {(target.vocab_size, target.hidden_size)}")
    head = EagleHead(target, num_layers=cfg.get("num_hidden_layers", 1),
                     fc_bias=cfg.get("bias", True), qkv_bias=cfg.get("qkv_bias", False))
    load_state(head, files[:1], f"EAGLE head {folder}", EagleError,
               skip=lambda name: name == EMBEDDING_KEY)
    return head, cfg, folder
