"""Hydra (Ankner et al., 2024): Medusa's decoding with sequentially dependent heads. The tree,
its verification and typical acceptance are Medusa's; only drafting differs: the tree grows a
depth at a time, head d reading, for every node at depth d that has children, the target's last
hidden state and the embeddings of the tokens on that node's path (one batched head call per
depth), so two nodes at the same depth can get different children. With prefix-mlp heads (Hydra++),
the hidden state the heads read is the output of their own decoder layer, which attends over
every committed position through its own KV cache: after each step it is fed the target's
hidden states at the tokens just accepted."""

from __future__ import annotations

import torch

from ..drafters.hydra import load_hydra
from ..drafters.medusa import TOP_K
from ..train import Trainer
from ..train.hydra import build_builtin_hydra, train_hydra
from .base import ADDON_FOLDER, Addon, Option
from .medusa import Medusa


class Hydra(Medusa):
    name = "hydra"
    description = ("Hydra: Medusa's tree with sequentially dependent heads (each reads the "
                   "drafted path's embeddings)")
    options = {**Medusa.options,
               "heads": Option(None, str, "heads folder (config.json + hydra_lm_head.pt / "
                               ".safetensors, ours or the official) or a hub id")}
    builtin_addon = Addon(settings={"num_heads": 4, "steps": 300, "lr": 3e-3, "batch_size": 16,
                                    "share_lm_head": True}, build=build_builtin_hydra)
    builtin_options = {"heads": ADDON_FOLDER, "tree": "budget16"}
    trainer = Trainer(
        train_hydra, "heads",
        "Train Hydra heads: head k reads the hidden state and the embeddings of the k+1 tokens "
        "before its own; loss Σ 0.8^k·CE_k on assistant tokens. Resumes from "
        "OUT/checkpoint.pt when interrupted.",
        "Output folder (hydra_lm_head.safetensors + config.json).",
        {**Medusa.trainer.options, "num_layers": Option(1, int, "ResBlocks per head."),
         "arch": Option("mlp", str, "Head architecture: mlp, or prefix-mlp (Hydra++: the heads "
                        "read one extra decoder layer over the hidden states).")})
    # As Medusa's on SmolLM2: the heads share its 28M-parameter LM head. Its own dict, so that a
    # target added to one method is not added to the other.
    target_addons = dict(Medusa.target_addons)

    load = staticmethod(lambda folder, engine: load_hydra(folder, engine.config, engine.lm_head))
    keep = staticmethod(lambda heads, n: heads.keep(n))

    def reader(self, capacity: int):
        prefix = self.heads.prefix_embeding_layer
        if prefix is None:
            return super().reader(capacity)
        engine = self.engine
        cache = engine.new_cache(capacity, 1)

        def read(rows, offset):
            n = rows.shape[0]
            rope = engine.rope_for(offset, n)
            out = prefix(rows[None], rope, cache, offset, engine.attention_mask(offset, n, None))
            return out[0, -1:]
        return read

    def candidates(self, hidden: torch.Tensor, pending: int) -> list[int]:
        """Node tokens, depth by depth: each node's children are head d's top-k ranks given the
        node's own path."""
        tree, engine = self.tree, self.engine
        tokens = [pending] + [0] * (len(tree) - 1)
        inputs = {0: torch.cat([hidden[0], engine.embed(
            torch.tensor([pending], device=engine.device))[0]], -1)}
        for depth in range(1, tree.depth + 1):
            nodes = [i for i, d in enumerate(tree.depths) if d == depth]
            parents = list(dict.fromkeys(tree.parents[i] for i in nodes))
            logits = self.heads(depth - 1, torch.stack([inputs[p] for p in parents]))
            ranks = logits.float().topk(TOP_K, dim=-1).indices.tolist()
            row = {p: r for r, p in enumerate(parents)}
            for i in nodes:
                tokens[i] = ranks[row[tree.parents[i]]][tree.choices[i][-1]]
            deeper = [i for i in nodes if tree.children[i]]
            if deeper:
                embeds = engine.embed(torch.tensor([tokens[i] for i in deeper],
                                                   device=engine.device))
                for i, e in zip(deeper, embeds):
                    inputs[i] = torch.cat([inputs[tree.parents[i]], e], -1)
        return tokens
