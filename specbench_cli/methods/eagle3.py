"""EAGLE-3 (Li et al., 2025): EAGLE-2's dynamic draft tree, drafted by a head that reads the
target's hidden states entering a low, a middle and a high layer (fused by an FC) instead of its
top-layer features, and scores only a reduced draft vocabulary with its own small LM head (see
drafters/eagle3.py). What changes against EAGLE-2 is where the features come from (the target's
forwards keep three layers' inputs) and how draft ids become target ids (d2t); the tree, its
verification and the head's catch-up are EAGLE-2's."""

from __future__ import annotations

import torch

from ..drafters.eagle3 import load_eagle3
from ..engine import Engine
from ..train import Trainer
from ..train.eagle3 import train_eagle3
from ..train.loop import addon_builder
from .base import ADDON_FOLDER, Addon, Option, TargetAddon
from .eagle import Eagle
from .verify import DecodeState


class Eagle3(Eagle):
    name = "eagle3"
    description = ("EAGLE-3: a head over fused low/mid/high target features drafting in a "
                   "reduced vocabulary; EAGLE-2's dynamic tree")
    options = {**{k: v for k, v in Eagle.options.items() if k != "draft_vocab"},
               "head": Option(None, str, "EAGLE-3 head folder or hub id (ours: model.safetensors;"
                              " official: config.json with draft_vocab_size, d2t/t2d maps)")}
    # The built-in target has 6 layers: the features enter layers 2, 3 and 3.
    builtin_addon = Addon(settings={"steps": 1000, "lr": 3e-3, "batch_size": 16,
                                    "draft_vocab": 512, "ttt": 4},
                          build=addon_builder(train_eagle3), teacher_layers=(2, 3))
    builtin_options = {"head": ADDON_FOLDER, "total_tokens": 12, "depth": 7, "top_k": 2}
    trainer = Trainer(
        train_eagle3, "head",
        "Train an EAGLE-3 draft head: fused low/mid/high target features, a reduced draft "
        "vocabulary (the most frequent answer tokens), training-time test (the head unrolled "
        "on its own outputs), loss Σ 0.8^j·soft-CE_j. Resumes from OUT/checkpoint.pt when "
        "interrupted.",
        "Output folder (config.json + model.safetensors).",
        {"lr": Option(5e-5, float, "Peak learning rate (AdamW, betas 0.9/0.95, cosine)."),
         "draft_vocab": Option(32000, int, "Draft vocabulary size (most frequent tokens)."),
         "ttt": Option(7, int, "Training-time test steps (the head unrolled on itself)."),
         "warmup": Option(None, int, "Warm-up steps (default steps/10).")})
    # SmolLM2's LM head is 28M of its 135M parameters: an 8192-token draft vocabulary cuts the
    # head pass's share of it by 6x.
    target_addons = {"smollm2": TargetAddon(
        {"steps": 250, "lr": 1e-3, "batch_size": 4, "draft_vocab": 8192, "ttt": 4},
        {"head": ADDON_FOLDER, "total_tokens": 16, "depth": 6, "top_k": 3})}

    @staticmethod
    def load(spec: str, engine: Engine):
        return load_eagle3(spec, engine.config, engine.num_layers)

    @property
    def draft_vocab_size(self) -> int:
        return len(self.head.d2t)

    def to_target(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.target_ids(ids)

    def draft_logp(self, out: torch.Tensor) -> torch.Tensor:
        # The head's own (reduced) LM head through the engine's fused product where it runs.
        fused, weight = self.engine.fused, self.head.lm_head.weight
        logits = fused.product(self.head.norm(out)[0], weight) \
            if fused and self.head.lm_head.bias is None else None
        if logits is None:
            logits = self.head.draft_logits(out)[0]
        return torch.log_softmax(logits, dim=-1)

    def target_forward(self, ids, cache, offset, positions=None, block_mask=None):
        """The target's forward, keeping the hidden states that enter the head's feature
        layers: (logits (1, n, V), fused features (1, n, 3H))."""
        engine = self.engine
        h, kept = engine.forward_keeping(ids, self.head.layers_used, cache, offset, positions,
                                         block_mask)
        features = torch.cat([kept[i] for i in self.head.layers_used], dim=-1)
        return engine.logits(engine.norm(h)), features

    def prefill(self, ids, cache):
        return self.target_forward(ids, cache, 0)

    def verify_forward(self, state: DecodeState):
        return lambda ids, offset, positions, block_mask: self.target_forward(
            ids, state.cache, offset, positions, block_mask)
