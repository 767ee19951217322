"""Medusa-1: extra heads on the target's last hidden state propose the next tokens; a sparse
tree of their top-k candidates is verified in one forward (shared tree verification).

Head k (0-based) at position t predicts token t+2+k. A tree is a set of rank tuples: the node
(r1, ..., rd) holds head d-1's rank-rd candidate under the node (r1, ..., r(d-1)).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..drafters.medusa import TOP_K, HeadsError, heads_path, load_heads, load_tree, preset_size
from ..engine import Engine
from ..errors import SpecbenchError
from ..files import checked, read_json
from ..train import Trainer
from ..train.medusa import build_builtin_heads, train_medusa
from .base import ADDON_FOLDER, GREEDY, Addon, Budget, Decoding, Generation, Method, Option, \
    TargetAddon
from .verify import DecodeState, Tree, draw, verify_tree

class Medusa(Method):
    name = "medusa"
    description = "Medusa-1: extra heads propose top-k candidates, verified as a sparse tree"
    options = {
        "heads": Option(None, str, "heads file or folder (medusa_lm_head.pt/.safetensors) or a "
                        "hub id"),
        "num_heads": Option(None, int, "use the first N heads (default: all)", low=1),
        "tree": Option("budget64", str, "tree preset (budget16, budget32, budget64) or a "
                       "JSON/YAML file of rank lists"),
        "typical": Option(False, bool, "sampling: typical acceptance (lossy)"),
        "epsilon": Option(0.09, float, "typical: ε in p(x) > min(ε, δ·e^−H)", low=0.0),
        "delta": Option(0.3, float, "typical: δ in p(x) > min(ε, δ·e^−H)", low=0.0)}
    budget = Budget("tree", "tree = budgetN, the tree grown for N tokens from the heads' "
                    "accuracies", lambda n, o: {"tree": f"budget{n}"},
                    lambda o: preset_size(o["tree"]))
    # On the built-in model a wide tree costs more than it gains on a CPU.
    builtin_addon = Addon(settings={"num_heads": 4, "steps": 300, "lr": 3e-3, "batch_size": 16},
                          build=build_builtin_heads)
    builtin_options = {"heads": ADDON_FOLDER, "tree": "budget16"}
    trainer = Trainer(
        train_medusa, "heads",
        "Train Medusa heads: loss Σ 0.8^k·CE_k on assistant tokens, heads' output layers start "
        "as the LM head. Resumes from OUT/checkpoint.pt when interrupted.",
        "Output folder (medusa_lm_head.safetensors + config.json).",
        {"num_heads": Option(4, int, "Heads; head k predicts the token 2+k ahead."),
         "lr": Option(1e-3, float, "Peak learning rate (cosine schedule)."),
         "share_lm_head": Option(False, bool, "Heads reuse the target's LM head instead of a "
                                              "vocab projection each (small targets)."),
         "warmup": Option(None, int, "Warm-up steps (default steps/10).")})
    # SmolLM2: heads share the LM head (its 28M-parameter vocab projection would be 21% of the
    # target a head; docs/real-models.md), ResBlocks only.
    target_addons = {"smollm2": TargetAddon(
        {"num_heads": 3, "share_lm_head": True, "steps": 150, "lr": 1e-3, "batch_size": 4},
        {"heads": ADDON_FOLDER, "tree": "budget16"})}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        heads = self.require("heads", f"heads: --opt {self.name}.heads=PATH (train them with "
                                      f"`specbench train {self.name}`)")
        if isinstance(heads, (str, Path)):
            folder = heads_path(str(heads))
            heads = self.load(folder, engine)
            accuracy = calibration_of(folder)
            o["heads"] = str(folder)
        else:
            accuracy = None
        if o["num_heads"] is not None:
            if not 1 <= o["num_heads"] <= len(heads):
                raise SpecbenchError(f"{self.name}: num_heads must be in [1, {len(heads)}]")
            heads = self.keep(heads, o["num_heads"])
        self.heads = heads.to(engine.device, engine.dtype).eval().requires_grad_(False)
        choices = o["tree"] if isinstance(o["tree"], list) else \
            load_tree(o["tree"], len(self.heads), accuracy)
        if max(map(len, choices)) > len(self.heads):
            raise SpecbenchError(f"{self.name}: the tree is {max(map(len, choices))} deep but "
                                 f"there are only {len(self.heads)} heads")
        self.tree = Tree.from_choices(choices)
        # Typical acceptance does not keep the target's distribution.
        self.lossless = not o["typical"]

    def parameter_overhead(self) -> dict:
        params = sum(p.numel() for p in self.heads.parameters())
        return {"params": params, "bytes": params * self.engine.dtype.itemsize}

    def info(self) -> dict:
        return {"heads": len(self.heads), "tree_tokens": len(self.tree), "tree_depth": self.tree.depth}

    # How the heads are read from a folder, and cut to the first n (Hydra's differ).
    @staticmethod
    def load(folder: Path, engine: Engine):
        return load_heads(folder, engine.config.hidden_size, engine.config.vocab_size,
                          engine.lm_head)

    keep = staticmethod(lambda heads, n: heads[:n])

    def reader(self, capacity: int):
        """`read(rows, offset)`: what the heads see after a step, from the target's final
        hidden states at the rows just committed (positions offset, offset + 1, …): the last
        one (1, H). Hydra's prefix-mlp variant runs its own layer over all of them."""
        return lambda rows, offset: rows[-1:]

    def candidates(self, hidden: torch.Tensor, pending: int) -> list[int]:
        """Node tokens of the tree from each head's top-k at the last accepted position."""
        top = torch.stack([head(hidden)[0].float() for head in self.heads])
        ranks = top.topk(TOP_K, dim=-1).indices.tolist()       # [head][rank]
        return [0] + [ranks[len(c) - 1][c[-1]] for c in self.tree.choices[1:]]

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        read = self.reader(len(prompt_ids) + max_new_tokens + 1)
        with state.phase("prefill"):
            h = read(state.hidden[0], 0)
        while not state.done:
            start = state.offset
            with state.phase("draft"):
                candidates = self.candidates(h, state.pending)
            result = verify_tree(state, self.tree, candidates, sampled_select=self.typical_path
                                 if self.options["typical"] else None)
            with state.phase("draft"):
                h = read(result.hidden, start)
        return state.result()


    def typical_path(self, state: DecodeState, tree: Tree, tokens: list[int], p: torch.Tensor):
        """Medusa's typical acceptance: a candidate passes when its probability under its
        parent's p exceeds min(ε, δ·exp(−H(p))); the first longest passing path is kept and the
        next token drawn from p after it."""
        o = self.options
        entropy = -(p * torch.log(p.clamp_min(1e-10))).sum(-1)
        cut = torch.clamp(torch.exp(-entropy) * o["delta"],
                          max=o["epsilon"]).tolist()
        passes = [True] + [float(p[tree.parents[i], tokens[i]]) > cut[tree.parents[i]]
                           for i in range(1, len(tree))]
        kept = [0]
        for path in tree.paths:
            n = 1
            while n < len(path) and passes[path[n]]:
                n += 1
            if n > len(kept):
                kept = path[:n]
        return kept, draw(state.rng, p[kept[-1]])


def calibration_of(heads_path: Path) -> list[list[float]] | None:
    """Per-head top-k accuracies stored beside the heads by `specbench medusa calibrate`."""
    folder = heads_path if heads_path.is_dir() else heads_path.parent
    file = folder / "calibration.json"
    if not file.is_file():
        return None
    return checked(read_json(file, HeadsError), {"accuracy": list}, str(file),
                   HeadsError)["accuracy"]
