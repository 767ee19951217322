"""The EAGLE-3 draft head (Li et al., 2025, "EAGLE-3: Scaling up Inference Acceleration of Large
Language Models via Training-Time Test"; github.com/SafeAILab/EAGLE, eagle/model/cnets.py for the
key names): the target's hidden states entering three of its layers (low, middle, high) are
fused by `fc` (3H → H, no bias); one decoder layer whose attention reads [normed embedding of the
next token, normed hidden] (2H wide) predicts the next hidden state; the head's own `norm` and
`lm_head` score a reduced draft vocabulary, mapped to target ids by `d2t` (target = draft +
d2t[draft]; `t2d` marks the target ids kept). While drafting, the head's own output replaces the
fused features."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..engine import EngineConfig
from ..engine.llama import MLP, Attention, Linear, RMSNorm, rotate
from ..engine.load import checkpoint_tensors, load_state
from ..files import checked
from .addon_folder import check_finished, read_config
from .eagle import CONFIG_FIELDS, EMBEDDING_KEY, WEIGHT_FILES, EagleError, head_folder

VOCAB_BUFFERS = ("d2t", "t2d")


def feature_layers(num_layers: int) -> tuple[int, int, int]:
    """Which hidden states are fused: those entering layers 2, L//2 and L-3 (the official
    choice), kept inside [1, L] for targets of fewer than five layers."""
    return tuple(min(max(i, 1), num_layers) for i in (2, num_layers // 2, num_layers - 3))


class FusedLayer(nn.Module):
    """The head's decoder layer: attention over [input_layernorm(embedding), hidden_norm(h)],
    the residual stream being h alone; then the usual MLP block."""

    def __init__(self, cfg: EngineConfig):
        super().__init__()
        h = cfg.hidden_size
        self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        attn = self.self_attn
        attn.q_proj = Linear(2 * h, cfg.num_heads * cfg.head_dim, bias=False)
        attn.k_proj = Linear(2 * h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        attn.v_proj = Linear(2 * h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def inputs(self, embeds, hidden):
        return torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)

    def finish(self, hidden, attended):
        x = hidden + attended
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, embeds, hidden, cos, sin, cache, offset, mask):
        attended = self.self_attn(self.inputs(embeds, hidden), cos, sin, cache, 0, offset, mask)
        return self.finish(hidden, attended)

    def unrolled(self, embeds, hidden, cos, sin, past: list):
        """Training-time test: one unrolled step over whole sequences (b, n, ·) without a cache.
        `past` holds the keys/values of the earlier steps; position t of step j attends to step
        0's positions ≤ t and to its own position t in steps 1..j, as a drafted node attends to
        the committed rows and its own ancestors at inference. Appends this step's keys/values."""
        attn = self.self_attn
        x = self.inputs(embeds, hidden)
        b, n = x.shape[:2]
        q = rotate(attn.q_proj(x).view(b, n, attn.n_heads, -1).transpose(1, 2), cos, sin)
        k = rotate(attn.k_proj(x).view(b, n, attn.n_kv, -1).transpose(1, 2), cos, sin)
        v = attn.v_proj(x).view(b, n, attn.n_kv, -1).transpose(1, 2)
        past.append((k, v))
        groups = attn.n_heads // attn.n_kv
        keys = [k.repeat_interleave(groups, 1) for k, _ in past]
        values = [v.repeat_interleave(groups, 1) for _, v in past]
        scale = q.shape[-1] ** -0.5
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        scores = [(q @ keys[0].transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))]
        scores += [(q * k).sum(-1, keepdim=True) * scale for k in keys[1:]]     # the diagonal
        weights = torch.softmax(torch.cat(scores, -1).float(), -1).to(q.dtype)
        out = weights[..., :n] @ values[0]
        for j, v in enumerate(values[1:]):
            out = out + weights[..., n + j:n + j + 1] * v
        attended = attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
        return self.finish(hidden, attended)


class Eagle3Head(nn.Module):
    """fc → midlayer → norm → lm_head over `draft_vocab` tokens. Names are the official ones."""

    def __init__(self, target: EngineConfig, draft_vocab: int, layers: tuple[int, ...]):
        super().__init__()
        cfg = EngineConfig(**{**target.__dict__, "qkv_bias": False, "o_bias": False,
                              "mlp_bias": False, "num_layers": 1})
        self.config, self.layers_used = cfg, tuple(layers)
        h = cfg.hidden_size
        self.fc = Linear(len(layers) * h, h, bias=False)
        self.midlayer = FusedLayer(cfg)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.lm_head = Linear(h, draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(target.vocab_size, dtype=torch.bool))
        self.layers = [self.midlayer]        # what a cache is sized by (one layer)

    def set_vocab(self, kept: torch.Tensor):
        """The draft vocabulary: `kept`, ascending target ids."""
        self.d2t.copy_(kept - torch.arange(len(kept), device=kept.device))
        self.t2d.zero_()
        self.t2d[kept] = True

    def target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def draft_logits(self, out: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(out)).float()

    def forward(self, hidden, embeds, rope, cache, offset, mask=None):
        """hidden: fused target features (b, n, 3H) or the head's own outputs (b, n, H)."""
        if hidden.shape[-1] != self.config.hidden_size:
            hidden = self.fc(hidden)
        cos, sin = rope
        return self.midlayer(embeds, hidden, cos, sin, cache, offset, mask)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def eagle3_config(target: EngineConfig, draft_vocab: int, layers, extra: dict | None = None
                  ) -> dict:
    """The official config.json shape (a one-layer LlamaConfig plus draft_vocab_size)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLMEagle3"],
            "hidden_size": target.hidden_size, "num_hidden_layers": 1,
            "num_attention_heads": target.num_heads, "num_key_value_heads": target.num_kv_heads,
            "head_dim": target.head_dim, "intermediate_size": target.intermediate_size,
            "vocab_size": target.vocab_size, "draft_vocab_size": draft_vocab,
            "rms_norm_eps": target.rms_norm_eps, "rope_theta": target.rope_theta,
            "rope_scaling": target.rope_scaling,
            "specbench": {"feature_layers": list(layers), **(extra or {})}}


def load_eagle3(spec: str, target: EngineConfig, num_layers: int) -> tuple[Eagle3Head, Path]:
    """An EAGLE-3 head folder (ours: model.safetensors; official: pytorch_model.bin or
    model.safetensors), with strict key, shape and model checks."""
    folder = head_folder(spec)
    cfg = read_config(folder, "EAGLE-3 head", EagleError, CONFIG_FIELDS)
    files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not files:
        raise EagleError(f"EAGLE-3 head {folder}: no {' or '.join(WEIGHT_FILES)}")
    if "draft_vocab_size" not in cfg:
        raise EagleError(f"EAGLE-3 head {folder}: config.json has no draft_vocab_size (an "
                         "EAGLE-1/2 head? run it with the eagle method)")
    for key, want in (("hidden_size", target.hidden_size), ("vocab_size", target.vocab_size),
                      ("target_hidden_size", target.hidden_size)):
        if cfg.get(key) not in (None, want):
            raise EagleError(f"EAGLE-3 head {folder} was made for another model: {key} "
                             f"{cfg[key]}, the target has {want}")
    ours = checked(cfg.get("specbench", {}), {"feature_layers?": list},
                   f"{folder / 'config.json'}: specbench", EagleError)
    layers = ours.get("feature_layers") or feature_layers(num_layers)
    if not all(isinstance(i, int) and 1 <= i <= num_layers for i in layers):
        raise EagleError(f"{folder / 'config.json'}: feature_layers {layers} are not layers "
                         f"of this {num_layers}-layer target")
    head = Eagle3Head(target, cfg["draft_vocab_size"], tuple(layers))
    # The maps are buffers, not parameters: read here, beside the embedding copy's check.
    maps = {}
    for name, shape, read in checkpoint_tensors(files[0], mmap=False):
        if name == EMBEDDING_KEY and shape != (target.vocab_size, target.hidden_size):
            raise EagleError(f"EAGLE-3 head {folder}: its embedding table is {shape}, the "
                             f"target's is {(target.vocab_size, target.hidden_size)}")
        if name in VOCAB_BUFFERS and shape == tuple(getattr(head, name).shape):
            maps[name] = read(getattr(head, name).dtype, torch.device("cpu"))
    for name in VOCAB_BUFFERS:
        if name not in maps:
            raise EagleError(f"EAGLE-3 head {folder}: {name} missing or not "
                             f"{tuple(getattr(head, name).shape)}")
        getattr(head, name).copy_(maps[name])
    load_state(head, files[:1], f"EAGLE-3 head {folder}", EagleError,
               skip=lambda name: name in (EMBEDDING_KEY,) + VOCAB_BUFFERS)
    kept = head.target_ids(torch.arange(len(head.d2t)))
    if kept.min() < 0 or kept.max() >= target.vocab_size or not head.t2d[kept].all():
        raise EagleError(f"EAGLE-3 head {folder}: d2t maps outside the target's vocabulary "
                         "or disagrees with t2d")
    return head, folder


def reduced_vocab(spec: str) -> torch.Tensor:
    """A draft vocabulary for FR-Spec on EAGLE-2: ascending target ids from a JSON list of ids,
    or the vocabulary of an EAGLE-3 head folder (its t2d), so the two are measured alike."""
    path = Path(spec).expanduser()
    if path.is_dir():
        check_finished(path, "EAGLE-3 head", EagleError)
        files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
        for name, _, read in (checkpoint_tensors(files[0], True) if files else ()):
            if name == "t2d":
                return read(torch.bool, torch.device("cpu")).nonzero()[:, 0]
        raise EagleError(f"draft vocabulary {path}: not an EAGLE-3 head folder (no t2d)")
    try:
        ids = json.loads(path.read_text())
        return torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long)
    except (OSError, ValueError, TypeError):
        raise EagleError(f"draft vocabulary {path}: neither an EAGLE-3 head folder nor a JSON "
                         "list of token ids") from None


def frequent_tokens(examples, size: int, vocab_size: int) -> torch.Tensor:
    """The `size` most frequent target ids over the training examples' assistant tokens
    (FR-Spec's and EAGLE-3's draft vocabulary), ascending."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ex in examples:
        ids = torch.tensor(ex.ids)[torch.tensor(ex.assistant, dtype=torch.bool)]
        counts += torch.bincount(ids, minlength=vocab_size)
    # Ties broken by id so the choice is the same on every machine.
    order = sorted(range(vocab_size), key=lambda i: (-int(counts[i]), i))
    return torch.tensor(sorted(order[:min(size, vocab_size)]), dtype=torch.long)

