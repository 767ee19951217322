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
        # torch's fused kernel (one op, not seven; the same values as the textbook form here)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rotate(x, cos, signed_sin):
    """RoPE on the last dimension: x·cos + rotate_half(x)·sin, where rotate_half(x) =
    (-x₂, x₁). Rolling x by half gives (x₂, x₁), and the sign lives in `signed_sin` (Engine.rope
    returns (-sin, sin) halves): three ops instead of seven, the same products."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


class Linear(nn.Linear):
    """nn.Linear whose inference products run through the kernel measured fastest for this
    weight's shape and the block's size on this device: engine/kernels.py installs `kernels`, a
    table of products indexed by the number of rows (the last entry for every larger block),
    bound to `kernel_weight`. With autograd on (training), before a choice is installed, or
    once the weight was replaced or cast, it is F.linear."""

    kernels = None
    kernel_weight = None
    packed = None       # oneDNN's prepacked copy of the weight, where a chosen kernel reads it
    parts = ()          # the Linears a fused product stands for (fuse)

    def forward(self, x):
        weight = self.weight
        if self.kernels is None or weight is not self.kernel_weight or x.dtype != weight.dtype \
                or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return F.linear(x, weight, self.bias)
        rows = x.numel() // x.shape[-1]
        return self.kernels[rows if rows < len(self.kernels) else -1](x)

    def share(self):
        """A fused product's parts (see fuse) become views of their slices of its weight."""
        start = 0
        for part in self.parts:
            rows = part.weight.shape[0]
            part.weight = nn.Parameter(self.weight[start:start + rows], requires_grad=False)
            if self.bias is not None:
                part.bias = nn.Parameter(self.bias[start:start + rows], requires_grad=False)
            start += rows


def fuse(parts: list[Linear]) -> Linear:
    """One Linear for several that read the same input: their weights stacked by output rows,
    and each part's weight (and bias) made a view of its slice (Linear.share), so no memory is
    added and the Hugging Face names still hold. One product then streams the same bytes with one
    call's overhead (SmolLM2, 2 threads: three products of 576 columns cost more than one of 960)."""
    weight = torch.cat([p.weight.detach() for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts])
    fused = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    fused.parts = parts
    fused.share()
    return fused


def holds_parts(fused: Linear | None, first: Linear) -> bool:
    """Whether a fused product still holds its parts' weights (a later `.to()` or a replaced
    weight leaves it stale)."""
    return fused is not None and fused.weight.data_ptr() == first.weight.data_ptr()


def fused_live(fused: Linear | None, first: Linear) -> bool:
    """Whether inference runs the fused product (else the parts run one by one)."""
    if fused is None or torch.is_grad_enabled():
        return False
    # (a compiled graph guards on the modules instead of reading pointers)
    return torch.compiler.is_compiling() or holds_parts(fused, first)


class Attention(nn.Module):
    def __init__(self, cfg: EngineConfig):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = Linear(h, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = Linear(h, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.num_heads * hd, h, bias=cfg.o_bias)
        self.qkv_proj = None        # fuse_projections' one product for all three, when made

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, offset: int, mask):
        """x (b, n, H). With a cache (decoding, b = 1) keys/values are stored at rows
        [offset, offset + n) and attention sees all rows so far; without one (training on whole
        sequences) attention is causal within the block. A list of segments for a cache is
        several sequences' blocks side by side (engine/batch.py), each with its own cache."""
        b, n = x.shape[:2]
        if fused_live(self.qkv_proj, self.q_proj):
            # One product for q, k and v, and one rotation for q and k together.
            heads = self.n_heads + 2 * self.n_kv
            qkv = self.qkv_proj(x).view(b, n, heads, self.head_dim).transpose(1, 2)
            qk = rotate(qkv[:, :self.n_heads + self.n_kv], cos, sin)
            q, k = qk.split((self.n_heads, self.n_kv), dim=1)
            v = qkv[:, self.n_heads + self.n_kv:]
        else:
            q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if isinstance(cache, list):     # engine/batch.py's Segments: sequences side by side
            out = cache.attend(self, layer, q, k, v)
        else:
            out = self.attend(q, k, v, cache, layer, offset, mask)
        return self.o_proj(out.to(x.dtype).transpose(1, 2).reshape(b, n, -1))

    def attend(self, q, k, v, cache: KVCache | None, layer: int, offset: int, mask):
        """Attention of a block's queries (b, heads, n, d) over the cache's rows before it and
        the block's own keys/values, stored at rows [offset, offset + n)."""
        n = q.shape[2]
        if cache is not None:
            k, v = cache.write(layer, offset, k, v)
            if k.device.type == "cpu":      # fp32 attention on a CPU (Engine.attention_dtype)
                q, k, v = q.float(), k.float(), v.float()
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and offset == 0 and n > 1,
            enable_gqa=self.n_kv != self.n_heads)


class MLP(nn.Module):
    def __init__(self, cfg: EngineConfig):
        super().__init__()
        h, m, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, m, bias=b)
        self.up_proj = Linear(h, m, bias=b)
        self.down_proj = Linear(m, h, bias=b)
        self.gate_up_proj = None    # fuse_projections' one product for both, when made

    def forward(self, x):
        if fused_live(self.gate_up_proj, self.gate_proj):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """A Llama decoder layer. The draft modules reuse it: an EAGLE head's first layer without
    its input norm (nn.Identity), a Kangaroo adapter's without the MLP (`mlp=False`)."""

    def __init__(self, cfg: EngineConfig, mlp: bool = True):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        if mlp:
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.mlp = MLP(cfg)
        self.has_mlp = mlp

    def forward(self, x, cos, sin, cache, layer, offset, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, offset, mask)
        return x + self.mlp(self.post_attention_layernorm(x)) if self.has_mlp else x


class Decoder(nn.Module):
    """The `model.` part of a Hugging Face checkpoint: embeddings, layers, final norm."""

    def __init__(self, cfg: EngineConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Engine(nn.Module):
    """The target model. Token blocks are shaped (1, n): one sequence per call; engine/batch.py
    joins several sequences' calls into one block."""

    # engine/fused.py's whole-layer C step for small blocks on a CPU, installed where measured
    # faster (fused.choose_fused); None runs every block through the modules below.
    fused = None
    static = None           # engine/static.py's compiled static-shape blocks (--compile)

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

    @property
    def cache_dtype(self) -> torch.dtype:
        """Keys and values are kept in the model's dtype: a half-precision model's keys and values
        are half-precision values, so wider storage would hold nothing more, and a step at a long
        context reads every layer's cache after the weights pushed it out of the CPU's caches
        (SmolLM2 bf16 at ~770 tokens: 18 MiB a step instead of 35; benchmarks/kv_cache_dtype.py)."""
        return self.dtype

    @property
    def attention_dtype(self) -> torch.dtype:
        """Attention computes in fp32 on a CPU whatever the cache's dtype (keys and values are
        widened exactly): torch's CPU attention is several times slower in half precision for a
        single query (SmolLM2's shapes, 2 threads: 179 µs bf16 against 35 µs fp32 after 256
        tokens, 660 against 84 after 1024)."""
        return torch.float32 if self.device.type == "cpu" else self.dtype

    def new_cache(self, capacity: int, num_layers: int | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """A cache of its own (`dtype`: another than cache_dtype, to compare the two)."""
        cfg = self.config
        return KVCache(num_layers or cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, capacity,
                       dtype or self.cache_dtype, self.device)

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
        """(cos, signed sin) at `positions`, the second with its first half negated (rotate)."""
        if self.inv_freq.device != self.device:
            self.inv_freq = self.inv_freq.to(self.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
        return emb.cos().to(self.dtype), sin.to(self.dtype)

    def fuse_projections(self):
        """Inference: q/k/v and gate/up each become one product (see fuse). The fused modules
        are plain attributes, not submodules: the state dict and parameter count stay HF's."""
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            object.__setattr__(attn, "qkv_proj", fuse([attn.q_proj, attn.k_proj, attn.v_proj]))
            object.__setattr__(mlp, "gate_up_proj", fuse([mlp.gate_proj, mlp.up_proj]))

    def attention_mask(self, offset: int, n: int, block_mask: torch.Tensor | None):
        """Additive mask (n, offset + n), 0 where a token may attend and -inf elsewhere: the
        committed prefix is visible to all, the block's own part is `block_mask` (boolean, True =
        may attend), causal when none is given. None means plain causal attention that SDPA
        handles by itself."""
        if block_mask is None:
            if n == 1 or offset == 0:
                return None
            block_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        # Built once a forward in attention's dtype: SDPA would otherwise convert a boolean mask
        # in every layer (trees verify ~5% faster on a small model, benchmarks/
        # medusa_tree_forward.py).
        mask = torch.zeros(n, offset + n, dtype=self.attention_dtype, device=self.device)
        mask[:, offset:].masked_fill_(~block_mask.to(self.device, torch.bool), float("-inf"))
        return mask

    def rope_for(self, offset: int, n: int, positions: torch.Tensor | None = None):
        """(cos, sin) for n tokens at `positions`, by default cache rows [offset, offset + n)."""
        if positions is None:
            positions = torch.arange(offset, offset + n, device=self.device)
        return self.rope(positions)

    def layers(self, h: torch.Tensor, start: int, end: int, cache: KVCache | None, offset: int,
               positions: torch.Tensor | None = None, block_mask: torch.Tensor | None = None,
               rope=None):
        """Run decoder layers [start, end) on hidden states h (1, n, H) written at cache rows
        [offset, offset + n). `positions` default to those rows (trees pass offset + depth)."""
        n = h.shape[1]
        rope = rope if rope is not None else self.rope_for(offset, n, positions)
        if self.static is not None and self.static.takes(n, offset, cache):
            return self.static.run(h, start, end, cache, offset, rope, block_mask)
        mask = self.attention_mask(offset, n, block_mask)
        if self.fused is not None and self.fused.takes(self, h, cache):
            return self.fused.run(h, start, end, cache, offset, rope, mask)
        cos, sin = rope
        for i in range(start, end):
            h = self.model.layers[i](h, cos, sin, cache, i, offset, mask)
        return h

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h)

    def logits(self, h_final: torch.Tensor) -> torch.Tensor:
        """LM head on already-normed hidden states, in fp32 so argmax ties resolve alike."""
        if self.fused is not None:
            out = self.fused.logits(self, h_final)
            if out is not None:
                return out
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

    def forward_keeping(self, ids: torch.Tensor, stops, cache: KVCache | None = None,
                        offset: int = 0, positions: torch.Tensor | None = None,
                        block_mask: torch.Tensor | None = None):
        """All layers on a block of ids, keeping the residual stream entering each layer in
        `stops` (what EAGLE-3's head and the add-on teachers read): (the last layer's output
        (b, n, H), {stop: (b, n, H)})."""
        rope = self.rope_for(offset, ids.shape[1], positions)
        h, start, kept = self.embed(ids), 0, {}
        for end in sorted(set(stops)) + [self.num_layers]:
            if end > start:
                h = self.layers(h, start, end, cache, offset, block_mask=block_mask, rope=rope)
            kept[end], start = h, end
        return h, kept
