"""A compact Llama-family forward (Llama 1/2/3, Vicuna, Mistral, Qwen2) over Hugging Face weights.

Written for speculative decoding: any layer range can run alone, a block of tokens can carry an
arbitrary attention mask (chains and trees) and explicit positions, and keys/values go to a
preallocated `KVCache` by index. Parameter names equal Hugging Face's, so a checkpoint's state
dict loads without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecbenchError
from .cache import KVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def sync(device: torch.device):
    """Wait for the device's queued work (timing must see it done); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UnsupportedModel(SpecbenchError):
    """The config describes an architecture this engine does not implement."""


@dataclass(frozen=True)
class EngineConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    model_type: str
    bos_token_id: int | None
    eos_token_id: int | list | None
    # The positions the model was trained for (None when the config does not say). Last and
    # defaulted, so configs built field by field elsewhere still construct.
    max_position_embeddings: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict) -> "EngineConfig":
        """Read a Hugging Face config.json dict (old `rope_scaling` or new `rope_parameters`)."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(
                f"model_type {model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama-family decoders)")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedModel(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise UnsupportedModel(f"RoPE type {rope_type!r} is not supported "
                                   "(supported: default, linear, llama3)")
        heads = cfg["num_attention_heads"]
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            # Qwen2 always has q/k/v biases and no o bias; Llama's attention_bias covers all four.
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            model_type=model_type,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            max_position_embeddings=cfg.get("max_position_embeddings"),
        )


def rope_inv_freq(cfg: EngineConfig) -> torch.Tensor:
    """On the CPU whatever the default device: the loader builds the engine under
    `torch.device("meta")`, and these frequencies are computed, not loaded."""
    dim = cfg.head_dim
    steps = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")
    inv_freq = 1.0 / (cfg.rope_theta ** (steps / dim))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    middle = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(middle, blended, out)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Linear(nn.Linear):
    """nn.Linear whose weight the loader stores transposed on a CPU (in × out, contiguous; the
    `weight` parameter is a view of it, so its meaning and name stay Hugging Face's).

    Why: for a product over a few tokens MKL runs one row-major GEMV on one thread, at ~40% of
    the memory bandwidth; on the transposed weight the same product streams it ~1.4× faster, and
    cut into `split` column blocks (one per thread, all views of the same storage) one batched
    product runs them in parallel, near the memory wall (benchmarks/engine_step.py). Blocks of
    32-64 tokens gain too (SmolLM2: 88 vs 103 ms at 32) and a 512-token prefill costs the same.
    Every output is still one dot product over the whole input: greedy tokens do not change."""

    split = 1       # column blocks: the loader sets the thread count where it divides out_features

    def forward(self, x):
        wt = self.weight.t()
        rows = x.numel() // x.shape[-1]
        if self.split == 1 or not wt.is_contiguous():
            return F.linear(x, self.weight, self.bias)
        k, n = wt.shape
        blocks = wt.view(k, self.split, n // self.split).transpose(0, 1)
        out = torch.bmm(x.reshape(1, rows, k).expand(self.split, rows, k), blocks)
        out = out.transpose(0, 1).reshape(*x.shape[:-1], n)
        return out if self.bias is None else out + self.bias


class Attention(nn.Module):
    def __init__(self, cfg: EngineConfig):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = Linear(h, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.num_heads * hd, h, bias=cfg.o_bias)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, offset: int, mask):
        """x (b, n, H). With a cache (decoding, b = 1) keys/values are stored at rows
        [offset, offset + n) and attention sees all rows so far; without one (training on whole
        sequences) attention is causal within the block."""
        b, n = x.shape[:2]
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, offset, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and offset == 0 and n > 1,
            enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: EngineConfig):
        super().__init__()
        h, m, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, m, bias=b)
        self.up_proj = Linear(h, m, bias=b)
        self.down_proj = Linear(m, h, bias=b)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EngineConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, layer, offset, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, offset, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The `model.` part of a Hugging Face checkpoint: embeddings, layers, final norm."""

    def __init__(self, cfg: EngineConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Engine(nn.Module):
    """The target model. Token blocks are shaped (1, n); batch size is 1 throughout (Spec-Bench)."""

    def __init__(self, cfg: EngineConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # A plain attribute, not a buffer: `.to(fp16)` must not round the RoPE frequencies.
        self.inv_freq = rope_inv_freq(cfg).float()
        self._cache: KVCache | None = None
        # A phase timer (methods/verify.Phases) while a run records a time breakdown, else None.
        self.phases = None

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def new_cache(self, capacity: int, num_layers: int | None = None) -> KVCache:
        cfg = self.config
        return KVCache(num_layers or cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, capacity,
                       self.dtype, self.device)

    def cache(self, capacity: int) -> KVCache:
        """The engine's shared cache, emptied, with room for `capacity` rows.

        Methods run one after another, so one cache serves them all; it only grows.
        """
        if self._cache is None or self._cache.capacity < capacity:
            self._cache = None  # free the old one before allocating the larger
            self._cache = self.new_cache(max(capacity, 256))
        self._cache.reset()
        return self._cache

    # The pieces the methods compose.
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def rope(self, positions: torch.Tensor):
        if self.inv_freq.device != self.device:
            self.inv_freq = self.inv_freq.to(self.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def attention_mask(self, offset: int, n: int, block_mask: torch.Tensor | None):
        """Additive mask (n, offset + n), 0 where a token may attend and -inf elsewhere: the
        committed prefix is visible to all, the block's own part is `block_mask` (boolean, True =
        may attend), causal when none is given. None means plain causal attention that SDPA
        handles by itself."""
        if block_mask is None:
            if n == 1 or offset == 0:
                return None
            block_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        # Built once a forward in the model's dtype: SDPA would otherwise convert a boolean mask
        # in every layer (trees verify ~5% faster on a small model, benchmarks/
        # medusa_tree_forward.py).
        mask = torch.zeros(n, offset + n, dtype=self.dtype, device=self.device)
        mask[:, offset:].masked_fill_(~block_mask.to(self.device, torch.bool), float("-inf"))
        return mask

    def layers(self, h: torch.Tensor, start: int, end: int, cache: KVCache | None, offset: int,
               positions: torch.Tensor | None = None, block_mask: torch.Tensor | None = None,
               rope=None):
        """Run decoder layers [start, end) on hidden states h (1, n, H) written at cache rows
        [offset, offset + n). `positions` default to those rows (trees pass offset + depth)."""
        n = h.shape[1]
        if rope is None:
            if positions is None:
                positions = torch.arange(offset, offset + n, device=self.device)
            rope = self.rope(positions)
        mask = self.attention_mask(offset, n, block_mask)
        cos, sin = rope
        for i in range(start, end):
            h = self.model.layers[i](h, cos, sin, cache, i, offset, mask)
        return h

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h)

    def logits(self, h_final: torch.Tensor) -> torch.Tensor:
        """LM head on already-normed hidden states, in fp32 so argmax ties resolve alike."""
        return self.lm_head(h_final).float()

    def forward(self, ids: torch.Tensor, cache: KVCache, offset: int,
                positions: torch.Tensor | None = None, block_mask: torch.Tensor | None = None,
                return_hidden: bool = False):
        """Full path: logits (1, n, V) for a block of ids; with `return_hidden`, also the final
        normed hidden states (what Medusa's heads read)."""
        h = self.layers(self.embed(ids), 0, self.num_layers, cache, offset, positions, block_mask)
        h = self.norm(h)
        logits = self.logits(h)
        return (logits, h) if return_hidden else logits
