"""EAGLE-1/2: a one-layer draft head autoregresses on the target's top-layer features.

The head reads, at position t, the target's final normed hidden state f_t and the embedding of
token t+1 (FC over their concatenation, embedding first), runs one Llama decoder layer with its
own KV cache and predicts f_{t+1}; the target's frozen LM head turns a prediction into draft
probabilities. While drafting it feeds on its own predictions; after each verification it
catches up on the target's real features at the accepted nodes.

EAGLE-2 grows the draft tree per step (`dynamic_tree`): `depth` head passes, each expanding the
`top_k` nodes of highest cumulative draft log-probability with their `top_k` children; every
drafted node is then reranked by that value and the best `total_tokens` (root included) are
verified as one tree. EAGLE-1 drafts a fixed tree of ranks (`static_tree`, option `tree`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..drafters.eagle import load_head
from ..drafters.medusa import load_tree, preset_size   # EAGLE-1's: Medusa-style rank trees
from ..drafters.eagle3 import reduced_vocab
from ..engine import Engine
from ..errors import SpecbenchError
from ..train import Trainer
from ..train.eagle import train_eagle
from ..train.loop import addon_builder
from .base import ADDON_FOLDER, GREEDY, Addon, Budget, Decoding, Generation, Method, Option, \
    Statistic, TargetAddon
from .verify import DRAFT_HEADROOM, DecodeState, Tree, verify_tree

def select_nodes(scores: torch.Tensor, budget: int) -> list[int]:
    """The `budget` best drafted nodes by cumulative log-probability, as ascending node ids.

    A child's value is its parent's plus a log-probability (≤ 0), and a parent has the smaller
    id, so a stable descending sort puts every parent before its children, ties included: the
    chosen set is prefix-closed."""
    order = torch.sort(scores, descending=True, stable=True).indices[:budget]
    return sorted(order.tolist())


def tree_within(budget: int, options: dict) -> dict:
    """EAGLE-2's tree of `budget` nodes: the head passes (depth) and the nodes expanded at each
    (top_k) follow it down, since a deeper or wider draft than the tree can keep is drafting
    paid for nothing; EAGLE-1's static tree is the preset grown for `budget` tokens."""
    if options["tree"] is not None:
        return {"tree": f"budget{budget}"}
    return {"total_tokens": budget, "depth": min(options["depth"], budget - 1),
            "top_k": min(options["top_k"], budget - 1)}


class Eagle(Method):
    name = "eagle"
    description = ("EAGLE-2: a one-layer head drafts from the target's features; dynamic draft "
                   "tree (EAGLE-1's static tree with the tree option)")
    options = {
        "head": Option(None, str, "head folder or hub id (ours: model.safetensors; official "
                       "EAGLE-1/2: config.json + pytorch_model.bin)"),
        "total_tokens": Option(60, int, "tree nodes verified per step, root included (EAGLE-2)",
                               low=2),
        "depth": Option(5, int, "head passes per step; drafts reach depth + 1 tokens ahead "
                        "(EAGLE-2)", low=1),
        "top_k": Option(10, int, "nodes expanded at each depth, and children per node "
                        "(EAGLE-2)", low=1),
        "tree": Option(None, str, "a static tree instead (EAGLE-1): a Medusa-style preset "
                       "(budget16, budget32, budget64) or a JSON/YAML file of rank lists"),
        "draft_vocab": Option(None, str, "FR-Spec: draft only among these target ids (a JSON "
                              "list, or an EAGLE-3 head folder's reduced vocabulary), so a "
                              "head pass scores a slice of the LM head")}
    budget = Budget("total_tokens (depth, top_k follow)", "total_tokens = budget; depth and "
                    "top_k at most budget − 1 (EAGLE-1: tree = budgetN)", tree_within,
                    lambda o: preset_size(o["tree"]) if o["tree"] is not None
                    else o["total_tokens"])
    statistics = (Statistic("head passes/step", "head_passes", "rounds", 1, "",
                            "draft-head forwards per verification step (catch-up included)"),)
    builtin_addon = Addon(settings={"steps": 1500, "lr": 3e-3, "batch_size": 16},
                          build=addon_builder(train_eagle))
    # On the built-in model a head pass costs ~0.25 of a target step on a CPU and the head's
    # drafts are mostly right or wrong at once: a narrow, deep tree gains most (README).
    builtin_options = {"head": ADDON_FOLDER, "total_tokens": 12, "depth": 7, "top_k": 2}
    trainer = Trainer(
        train_eagle, "head",
        "Train an EAGLE draft head: smooth-L1 regression of the target's next feature (weight "
        "1.0) plus soft cross-entropy against its next-token distribution (weight 0.1), uniform "
        "feature noise. Resumes from OUT/checkpoint.pt when interrupted.",
        "Output folder (config.json + model.safetensors).",
        {"lr": Option(3e-4, float, "Peak learning rate (AdamW, betas 0.9/0.95, cosine)."),
         "noise": Option(0.2, float, "Uniform noise on the input features, width "
                                     "noise·512/sequence length; 0 turns it off."),
         "warmup": Option(None, int, "Warm-up steps (default min(2000, steps/10)).")})
    target_addons = {"smollm2": TargetAddon(
        {"steps": 250, "lr": 1e-3, "batch_size": 4},
        {"head": ADDON_FOLDER, "total_tokens": 16, "depth": 6, "top_k": 3})}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        head = self.require("head", f"a draft head: --opt {self.name}.head=PATH or a hub id "
                                    f"(train one with `specbench train {self.name}`)")
        if isinstance(head, (str, Path)):
            head, folder = self.load(str(head), engine)
            o["head"] = str(folder)
        self.head = head.to(engine.device, engine.dtype).eval().requires_grad_(False)
        self.vocab = self.vocab_weight = None        # FR-Spec's reduced draft vocabulary
        if o.get("draft_vocab"):
            self.vocab = reduced_vocab(str(o["draft_vocab"])).to(engine.device)
            if len(self.vocab) == 0 or int(self.vocab.max()) >= engine.config.vocab_size:
                raise SpecbenchError(f"{self.name}: draft_vocab {o['draft_vocab']} is empty or "
                                     "holds ids outside the target's vocabulary")
            self.vocab_weight = engine.lm_head.weight[self.vocab].contiguous()
        self.tree = None
        if o["tree"] is not None:
            self.tree = Tree.from_choices(load_tree(str(o["tree"]), 64))
        size = len(self.tree) if self.tree else o["total_tokens"]
        if size > DRAFT_HEADROOM:
            raise SpecbenchError(f"{self.name}: a tree of {size} nodes is more than the "
                                 f"{DRAFT_HEADROOM} one verification may hold")

    @staticmethod
    def load(spec: str, engine: Engine):
        head, _, folder = load_head(spec, engine.config)
        return head, folder

    def info(self) -> dict:
        if self.tree is not None:
            return {"tree": "static", "tree_tokens": len(self.tree), "tree_depth": self.tree.depth}
        vocab = {} if self.draft_vocab_size == self.engine.config.vocab_size else \
            {"draft_vocab": self.draft_vocab_size}
        return {"tree": "dynamic", **vocab,
                **{k: self.options[k] for k in ("total_tokens", "depth", "top_k")}}

    def parameter_overhead(self) -> dict:
        params = self.head.num_parameters()
        return {"params": params, "bytes": params * self.engine.dtype.itemsize}

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        engine = self.engine
        drafted_rows = len(self.tree) if self.tree else self.options["depth"] * self.options["top_k"]
        cache = engine.new_cache(len(prompt_ids) + max_new_tokens + drafted_rows,
                                 len(self.head.layers))
        state = self.new_state(prompt_ids, max_new_tokens, decoding, self.prefill)
        stats = {"rounds": 0, "head_passes": 0, "drafted": 0}
        # The head's row t holds (f_t, token t+1): the prompt's features and the tokens after.
        with state.phase("prefill"):
            out = self.catch_up(cache, state.hidden, state.tokens[1:], 0)
        while not state.done:
            start = state.offset
            with state.phase("draft"):
                tree, tokens, passes = self.draft(state, out, start, cache)
            stats["rounds"] += 1
            stats["head_passes"] += passes + 1
            stats["drafted"] += len(tree) - 1
            result = verify_tree(state, tree, tokens, forward=self.verify_forward(state))
            if state.done:
                break
            # Forget the drafted rows; feed the target's features at the accepted nodes.
            with state.phase("draft"):
                cache.truncate(start)
                out = self.catch_up(cache, result.hidden[None],
                                    state.tokens[start + 1:start + 1 + len(result.path)], start)
        return state.result(**stats)

    def draft(self, state: DecodeState, out, committed: int, cache):
        """One step's tree, its tokens and the head passes it took; `out` is the head's
        prediction of the pending token's feature."""
        return (self.static_tree if self.tree else self.dynamic_tree)(out, committed, cache)

    def catch_up(self, cache, features, tokens: list[int], offset: int) -> torch.Tensor:
        """Feed committed rows; return the head's output at the last one (1, 1, H): its
        prediction of the pending token's feature."""
        engine, n = self.engine, len(tokens)
        ids = torch.tensor([tokens], device=engine.device)
        rope = engine.rope_for(offset, n)
        mask = engine.attention_mask(offset, n, None)
        return self.head(features, engine.embed(ids), rope, cache, offset, mask)[:, -1:]

    def feed(self, cache, features, tokens: torch.Tensor, position: int, seen: torch.Tensor,
             committed: int) -> torch.Tensor:
        """One head pass over k drafted nodes at one depth: `features` (1, k, H) are their
        parents' predicted features, `tokens` (k,) their tokens, `position` the head position
        of them all, `seen` (k, drafted) which drafted rows each may attend to (its ancestors
        and itself; the new rows last). Writes after the `committed` rows and the rows drafted
        before; returns the predicted features (1, k, H)."""
        engine = self.engine
        k, drafted = seen.shape
        mask = torch.zeros(k, committed + drafted, dtype=engine.dtype, device=engine.device)
        mask[:, committed:].masked_fill_(~seen.to(engine.device), float("-inf"))
        rope = engine.rope(torch.full((k,), position, device=engine.device))
        return self.head(features, engine.embed(tokens[None].to(engine.device)), rope, cache,
                         committed + drafted - k, mask)

    # The target's forwards: the plain ones (its final normed features are what the head reads).
    prefill = None

    def verify_forward(self, state: DecodeState):
        return None

    def draft_logp(self, features: torch.Tensor) -> torch.Tensor:
        """Draft log-probabilities (k, V) from predicted features (1, k, H); over the reduced
        vocabulary's V entries with FR-Spec."""
        if self.vocab_weight is not None:
            fused = self.engine.fused
            logits = fused.product(features[0], self.vocab_weight) if fused else None
            if logits is None:
                logits = torch.nn.functional.linear(features[0], self.vocab_weight).float()
        else:
            logits = self.engine.logits(features)[0]
        return torch.log_softmax(logits, dim=-1)

    @property
    def draft_vocab_size(self) -> int:
        return self.engine.config.vocab_size if self.vocab is None else len(self.vocab)

    def to_target(self, ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids → the target's ids."""
        return ids if self.vocab is None else self.vocab[ids]

    def dynamic_tree(self, out, committed: int, cache):
        """EAGLE-2. Node 0 is the root (the pending token); nodes are numbered as drafted, so
        parents come first. Returns the tree, its tokens and the head passes run."""
        o = self.options
        top_k = min(o["top_k"], self.draft_vocab_size)
        scores, tokens = self.draft_logp(out)[0].topk(top_k)
        tokens = self.to_target(tokens)
        all_scores, all_tokens = [scores], [tokens]
        all_parents = [torch.zeros(top_k, dtype=torch.long)]
        frontier = torch.arange(1, top_k + 1)            # the nodes the next pass feeds
        features = out.expand(1, top_k, out.shape[-1])
        seen = torch.zeros(top_k, 0, dtype=torch.bool)
        count = 1 + top_k
        for d in range(o["depth"]):
            seen = torch.cat((seen, torch.eye(len(frontier), dtype=torch.bool)), dim=1)
            out = self.feed(cache, features, tokens, committed + d, seen, committed)
            child_scores, child_tokens = self.draft_logp(out).topk(top_k, dim=-1)
            child_scores = (child_scores + scores[:, None]).flatten()
            child_tokens = self.to_target(child_tokens.flatten())
            all_scores.append(child_scores)
            all_tokens.append(child_tokens)
            all_parents.append(frontier.repeat_interleave(top_k))
            best = child_scores.topk(top_k).indices       # the next frontier
            slot = best // top_k                          # … and which fed node is its parent
            frontier = count + best
            count += len(child_scores)
            scores, tokens = child_scores[best], child_tokens[best]
            features, seen = out[:, slot], seen[slot]
        all_scores = torch.cat(all_scores)
        chosen = select_nodes(all_scores, o["total_tokens"] - 1)
        parents_of = torch.cat(all_parents).tolist()
        tokens_of = torch.cat(all_tokens).tolist()
        index = {0: 0} | {node + 1: i + 1 for i, node in enumerate(chosen)}
        tree = Tree([-1] + [index[parents_of[node]] for node in chosen])
        tree.scores = [0.0] + all_scores[chosen].tolist()    # path log-probabilities
        return tree, [0] + [tokens_of[node] for node in chosen], o["depth"]

    def static_tree(self, out, committed: int, cache):
        """EAGLE-1: the fixed tree's nodes take their parent's rank-r draft, depth by depth;
        each depth but the last feeds the nodes that have children."""
        tree = self.tree
        tokens = [0] * len(tree)
        outs = {0: out[0, 0]}                      # node → the feature it predicts
        fed: list[int] = []
        passes = 0
        for depth in range(tree.depth):
            parents = [i for i in range(len(tree)) if tree.depths[i] == depth and
                       i in tree.parents]
            if depth:
                features = torch.stack([outs[tree.parents[i]] for i in parents])[None]
                fed += parents
                seen = tree.mask[parents][:, fed]
                out = self.feed(cache, features, torch.tensor([tokens[i] for i in parents]),
                                committed + depth - 1, seen, committed)
                outs.update({i: out[0, j] for j, i in enumerate(parents)})
                passes += 1
            logp = self.draft_logp(torch.stack([outs[i] for i in parents])[None])
            ranks = logp.topk(max(c[-1] for c in tree.choices[1:]) + 1, dim=-1).indices
            ranks = self.to_target(ranks).tolist()
            for child, choice in enumerate(tree.choices):
                if child and tree.depths[child] == depth + 1:
                    tokens[child] = ranks[parents.index(tree.parents[child])][choice[-1]]
        return tree, tokens, passes
