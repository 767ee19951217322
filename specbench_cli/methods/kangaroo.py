"""Kangaroo: self-speculative decoding with a double early exit.

Drafts come from the target's own first `exit_layer` layers plus a one-layer adapter (attention
only) that feeds the target's LM head. Drafting stops after `max_draft` tokens or as soon as a
draft's top-1 probability falls below `threshold` (the second exit). Verification runs only the
deep layers [exit_layer, N) on the layer-l states buffered while drafting, so the shallow layers
are never computed twice.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..drafters.kangaroo import default_exit_layer, load_adapter
from ..engine import Engine
from ..errors import SpecbenchError
from ..train import Trainer
from ..train.kangaroo import train_kangaroo
from ..train.loop import addon_builder
from .base import ADDON_FOLDER, GREEDY, Addon, Decoding, Generation, Method, Option, Statistic, \
    TargetAddon, draft_budget
from .verify import DecodeState, verify_chain


class Kangaroo(Method):
    name = "kangaroo"
    description = "Kangaroo: shallow layers + adapter draft, early stop on low confidence (chain)"
    options = {
        "adapter": Option(None, str, "adapter folder (ours, or the official config.json + "
                          "pytorch_model.bin)"),
        "exit_layer": Option(None, int, "layers in the draft path (default: the adapter's, "
                             "else ~1/16 of the layers, at least 1)", low=1),
        "threshold": Option(0.6, float, "stop drafting when a draft's top-1 probability is "
                            "below this (the second early exit)", low=0.0, high=1.0),
        "max_draft": Option(6, int, "most drafts per round (γ)", low=1)}
    budget = draft_budget("max_draft")
    statistics = (Statistic("η-stop", "stopped_by_threshold", "rounds", 100, "%",
                            "share of drafting rounds ended by the confidence threshold"),)
    # Exit after layer 1 of the built-in model's 6 (default_exit_layer): the teacher keeps it.
    builtin_addon = Addon(settings={"exit_layer": 1, "steps": 300, "lr": 2e-3, "batch_size": 16},
                          build=addon_builder(train_kangaroo), teacher_layers=(1,))
    builtin_options = {"adapter": ADDON_FOLDER}
    trainer = Trainer(
        train_kangaroo, "adapter",
        "Train a Kangaroo adapter: soft cross-entropy against the target's next-token "
        "distribution on assistant tokens. Resumes from OUT/checkpoint.pt when interrupted.",
        "Output folder (config.json + model.safetensors).",
        {"exit_layer": Option(None, int, "Shallow layers under the adapter (default ~1/16 of "
                                         "the layers, ≥ 1)."),
         "lr": Option(5e-5, float, "Peak learning rate (AdamW, betas 0.9/0.95)."),
         "loss": Option("ce", str, "ce (soft cross-entropy, the paper's) or acceptance "
                                   "(1 − Σ min(p, q), expected rejection)."),
         "warmup": Option(None, int, "Warm-up steps (default min(2000, steps/10)).")})
    # SmolLM2: exit layer 2 of 30 (the paper's ~1/16), soft cross-entropy.
    target_addons = {"smollm2": TargetAddon(
        {"exit_layer": 2, "steps": 400, "lr": 1e-3, "batch_size": 4}, builtin_options)}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        n = engine.num_layers
        adapter = self.require("adapter", "an adapter: --opt kangaroo.adapter=PATH (train one "
                                          "with `specbench train kangaroo`)")
        trained_at = None
        if isinstance(adapter, (str, Path)):
            adapter, cfg = load_adapter(Path(adapter), engine.config)
            trained_at = cfg.get("specbench", {}).get("exit_layer")
            o["adapter"] = str(o["adapter"])
        self.adapter = adapter.to(engine.device, engine.dtype).eval().requires_grad_(False)
        if o["exit_layer"] is None:        # the layer the adapter was trained on, else ~1/16
            o["exit_layer"] = trained_at or default_exit_layer(n)
        if not 1 <= o["exit_layer"] < n:
            raise SpecbenchError(f"kangaroo: exit layer must be in [1, {n - 1}] for this "
                                 f"{n}-layer model (got {o['exit_layer']})")

    def info(self) -> dict:
        # Verification runs only the deep layers: the cost model scales a forward by this share.
        layers = self.engine.num_layers
        return {"verify_layer_share": (layers - self.options["exit_layer"]) / layers}

    def parameter_overhead(self) -> dict:
        params = self.adapter.num_parameters()
        return {"params": params, "bytes": params * self.engine.dtype.itemsize}

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        # The adapter's own one-layer cache, on the engine's cache type.
        adapter_cache = self.engine.new_cache(len(prompt_ids) + max_new_tokens + 1, 1)
        state = self.new_state(prompt_ids, max_new_tokens, decoding,
                               lambda ids, cache: self.prefill(ids, cache, adapter_cache))
        catch_up = None          # a layer-l state the adapter has not seen yet
        stats = {"rounds": 0, "drafted": 0, "stopped_by_threshold": 0}
        while not state.done:
            with state.phase("draft"):
                draft, q, states, stopped = self.draft(state, adapter_cache, catch_up)
            stats["rounds"] += 1
            stats["drafted"] += len(draft)
            stats["stopped_by_threshold"] += stopped
            accepted = verify_chain(state, draft, lambda ids, offset: self.verify_forward(
                states[:, :ids.shape[1]], offset, state), q if state.sampling else None)
            # The adapter saw the pending token and all drafts but the last; after full
            # acceptance the last draft's state must catch up at the start of the next round.
            adapter_cache.truncate(state.offset)
            catch_up = states[:, accepted:accepted + 1] if accepted == len(draft) and draft \
                else None
        return state.result(**stats)

    def prefill(self, ids, cache, adapter_cache):
        engine, l = self.engine, self.options["exit_layer"]
        rope = engine.rope(torch.arange(ids.shape[1], device=engine.device))
        h = engine.layers(engine.embed(ids), 0, l, cache, 0, rope=rope)
        self.adapter(h, rope, adapter_cache, 0)    # fill the adapter's cache
        h = engine.norm(engine.layers(h, l, engine.num_layers, cache, 0, rope=rope))
        return engine.logits(h), h

    def shallow(self, token: int, offset: int, state: DecodeState):
        engine = self.engine
        ids = torch.tensor([[token]], device=engine.device)
        return engine.layers(engine.embed(ids), 0, self.options["exit_layer"], state.cache, offset)

    def draft(self, state: DecodeState, adapter_cache, catch_up):
        """Shallow layers on the pending token, then adapter → LM head → shallow layers per draft.
        Returns the drafts, the distributions they were drawn from (when sampling), the buffered
        layer-l states (pending + drafts) and whether the confidence exit stopped the round."""
        engine, o = self.engine, self.options
        offset = state.offset
        h = self.shallow(state.pending, offset, state)
        states = [h]
        block = h if catch_up is None else torch.cat([catch_up, h], dim=1)
        a_offset = offset - (block.shape[1] - 1)
        rope = engine.rope(torch.arange(a_offset, offset + 1, device=engine.device))
        a = self.adapter(block, rope, adapter_cache, a_offset,
                         mask=engine.attention_mask(a_offset, block.shape[1], None))[:, -1:]
        draft, q, stopped = [], [], False
        limit = min(o["max_draft"], state.room - 1)
        while len(draft) < limit:
            logits = engine.logits(a)[0, -1]
            token, q_i = state.draft_token(logits)
            # The exit reads the adapter's top-1 confidence (of q when sampling).
            p = (q_i if q_i is not None else torch.softmax(logits, dim=-1)).max()
            draft.append(token)
            q.append(q_i)
            states.append(self.shallow(draft[-1], offset + len(draft), state))
            if float(p) < o["threshold"]:
                stopped = True
                break
            if len(draft) == limit:
                break
            pos = offset + len(draft)
            a = self.adapter(states[-1], engine.rope(torch.tensor([pos], device=engine.device)),
                             adapter_cache, pos)
        return draft, q, torch.cat(states, dim=1), stopped

    def verify_forward(self, states, offset, state: DecodeState):
        engine = self.engine
        h = engine.layers(states, self.options["exit_layer"], engine.num_layers, state.cache,
                          offset)
        return engine.logits(engine.norm(h))
