"""The Kangaroo adapter: one attention layer that turns the target's layer-`exit_layer` states
into draft logits through the target's own LM head (Liu et al., 2024, "Kangaroo: Lossless
Self-Speculative Decoding via Double Early Exiting"), with its config and a strict loader for
ours and the official checkpoints."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..engine import EngineConfig
from ..engine.llama import DecoderLayer, RMSNorm
from ..engine.load import load_state
from ..errors import SpecbenchError
from ..files import checked
from .addon_folder import read_config


class AdapterError(SpecbenchError):
    pass


def default_exit_layer(num_layers: int) -> int:
    """About 1/16 of the layers, at least one: 2 for 32 layers (7B), 3 for 40 (13B)."""
    return max(1, int(num_layers / 16 + 0.5))


class Adapter(nn.Module):
    """Input RMSNorm → self-attention (the target's RoPE and KV heads) → residual → RMSNorm.
    Parameter names follow the official checkpoint (`layers.0.…`, `norm.weight`)."""

    def __init__(self, target: EngineConfig):
        super().__init__()
        # The attention has no biases, whatever the target's attention has.
        cfg = EngineConfig(**{**target.__dict__, "qkv_bias": False, "o_bias": False})
        self.config = cfg
        self.layers = nn.ModuleList([DecoderLayer(cfg, mlp=False)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, rope, cache, offset, mask=None):
        cos, sin = rope
        return self.norm(self.layers[0](h, cos, sin, cache, 0, offset, mask))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def adapter_config(target: EngineConfig, exit_layer: int, extra: dict | None = None) -> dict:
    """A LlamaConfig-shaped config.json with one layer, as the official checkpoints have."""
    return {"model_type": "llama", "architectures": ["KangarooAdapter"],
            "hidden_size": target.hidden_size, "num_hidden_layers": 1,
            "num_attention_heads": target.num_heads, "num_key_value_heads": target.num_kv_heads,
            "head_dim": target.head_dim, "vocab_size": target.vocab_size,
            "intermediate_size": target.intermediate_size, "rms_norm_eps": target.rms_norm_eps,
            "rope_theta": target.rope_theta, "rope_scaling": target.rope_scaling,
            "specbench": {"exit_layer": exit_layer, "target_num_layers": target.num_layers,
                          **(extra or {})}}


# What the loader reads of config.json; official checkpoints carry the shapes only.
CONFIG_FIELDS = {"hidden_size?": int, "vocab_size?": int, "specbench?": dict}


def load_adapter(path: Path, target: EngineConfig) -> tuple[Adapter, dict]:
    """Load an adapter folder (ours: model.safetensors; official: pytorch_model.bin) with strict
    key, shape and model checks. Returns the adapter (fp32, CPU) and its config."""
    path = Path(path)
    cfg = read_config(path, "Kangaroo adapter", AdapterError, CONFIG_FIELDS)
    checked(cfg.get("specbench", {}), {"exit_layer?": int, "target_num_layers?": int},
            f"{path / 'config.json'}: specbench", AdapterError)
    for key, want in (("hidden_size", target.hidden_size), ("vocab_size", target.vocab_size)):
        if cfg.get(key) not in (None, want):
            raise AdapterError(f"Kangaroo adapter {path} was made for another model: {key} "
                               f"{cfg[key]}, the target has {want}")
    trained_layers = cfg.get("specbench", {}).get("target_num_layers")
    if trained_layers not in (None, target.num_layers):
        raise AdapterError(f"Kangaroo adapter {path} was trained on a {trained_layers}-layer "
                           f"model; the target has {target.num_layers} layers")
    files = [f for f in (path / "model.safetensors", path / "pytorch_model.bin") if f.is_file()]
    if not files:
        raise AdapterError(f"Kangaroo adapter {path}: no model.safetensors or pytorch_model.bin")
    adapter = Adapter(target)
    load_state(adapter, files[:1], f"Kangaroo adapter {path}", AdapterError)
    return adapter, cfg
