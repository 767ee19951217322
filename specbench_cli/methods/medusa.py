"""Medusa-1: extra heads on the target's last hidden state propose the next tokens; a sparse
tree of their top-k candidates is verified in one forward (shared tree verification).

Head k (0-based) at position t predicts token t+2+k. A tree is a set of rank tuples: the node
(r1, ..., rd) holds head d-1's rank-rd candidate under the node (r1, ..., r(d-1)).
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import torch
from torch import nn

from ..engine import Engine
from ..engine.load import checkpoint_tensors, load_state, model_folder
from ..errors import SpecbenchError
from .base import ADDON_FOLDER, Addon, Generation, Method, Option
from .verify import DecodeState, Tree, draw, verify_tree

TOP_K = 10
CALIBRATION_EXAMPLES = 300      # conversations the built-in heads are calibrated on


class HeadsError(SpecbenchError):
    pass


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); zero-initialised so a fresh head starts as the LM head."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class SharedLMHead(nn.Module):
    """The target's own LM head as a head's output layer. On a small target a head's own vocab
    projection is most of the model (SmolLM2: 28M of 135M parameters a head), so its heads
    share the LM head and own only their ResBlock; nothing of it is saved, trained or counted."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self.__dict__["lm_head"] = lm_head      # unregistered: not a parameter of the heads

    def forward(self, x):
        return self.lm_head(x)


def make_heads(hidden: int, vocab: int, num_heads: int, lm_head: torch.Tensor | None = None,
               shared: nn.Module | None = None):
    """K × (ResBlock → Linear to vocab). Keys: `{k}.0.linear.weight/bias`, `{k}.1.weight` (the
    official layout). With `lm_head`, each head's output layer starts as a copy of it; with
    `shared` (the target's LM head module) the heads use it as is and own no `{k}.1`."""
    heads = nn.ModuleList(nn.Sequential(ResBlock(hidden), SharedLMHead(shared) if shared
                                        else nn.Linear(hidden, vocab, bias=False))
                          for _ in range(num_heads))
    if lm_head is not None and shared is None:
        with torch.no_grad():
            for head in heads:
                head[1].weight.copy_(lm_head)
    return heads


def load_heads(path: Path, hidden: int, vocab: int, lm_head: nn.Module | None = None):
    """medusa_lm_head.pt / .safetensors (or a folder holding one) with strict checks. The head
    count comes from the tensors: official configs miscount it. Heads without their own output
    layers (`{k}.1.weight`) share `lm_head`, the target's."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
                 if (path / n).is_file()]
        if not found:
            raise HeadsError(f"Medusa heads {path}: no medusa_lm_head.safetensors or .pt")
        path = found[0]
    if not path.is_file():
        raise HeadsError(f"Medusa heads {path} do not exist")
    # The head count comes from the tensor names (read before any tensor is).
    names = [name for name, _, _ in checkpoint_tensors(path, mmap=True)]
    count = 1 + max((int(k.split(".", 1)[0]) for k in names if k.split(".", 1)[0].isdigit()),
                    default=-1)
    if count == 0:
        raise HeadsError(f"Medusa heads {path}: no head tensors ('0.0.linear.weight', ...)")
    shared = not any(name.endswith(".1.weight") for name in names)
    if shared and lm_head is None:
        raise HeadsError(f"Medusa heads {path} share the target's LM head: pass it")
    heads = make_heads(hidden, vocab, count, shared=lm_head if shared else None)
    load_state(heads, [path], f"Medusa heads {path} do not fit the model", HeadsError,
               hint=f" (hidden {hidden}, vocabulary {vocab})")
    return heads


def grow_tree(accuracy: list[list[float]], budget: int) -> list[tuple[int, ...]]:
    """Greedy sparse tree (Medusa paper, appendix C): accuracy[k][r] is the chance that head k's
    rank-r candidate is right. A node's value is the product along its path (its chance to be
    accepted); the expected accepted length is the sum over nodes, so taking nodes in order of
    value maximises it for `budget` tokens (root included). Children never beat their parent,
    so the result is prefix-closed."""
    heads, top = len(accuracy), len(accuracy[0])
    frontier = [(-accuracy[0][r], (r,)) for r in range(top)]
    heapq.heapify(frontier)
    chosen = []
    while frontier and len(chosen) < budget - 1:
        neg, node = heapq.heappop(frontier)
        chosen.append(node)
        if len(node) < heads:
            for r in range(top):
                heapq.heappush(frontier, (neg * accuracy[len(node)][r], node + (r,)))
    return sorted(chosen, key=lambda c: (len(c), c))


# Per-head top-k accuracy profile used for the presets when no calibration exists: head k's
# top-1 accuracy falls with k, and rank r's share falls geometrically (shape as in the Medusa
# paper's Vicuna-7B measurements; `specbench medusa calibrate` measures a model's own).
DEFAULT_ACCURACY = [[a * 0.55 ** r for r in range(TOP_K)] for a in (0.60, 0.45, 0.35, 0.28)]
PRESETS = {f"budget{b}": b for b in (16, 32, 64)}


def load_tree(spec: str, num_heads: int, accuracy=None) -> list[tuple[int, ...]]:
    """A preset name (budget16/32/64) or a JSON/YAML file holding a list of rank tuples."""
    if spec in PRESETS:
        return grow_tree((accuracy or DEFAULT_ACCURACY)[:num_heads], PRESETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise HeadsError(f"medusa tree {spec}: not a preset ({', '.join(PRESETS)}) or a file")
    import yaml
    try:
        choices = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HeadsError(f"tree file {path}: not JSON/YAML ({str(err).splitlines()[0]})") from None
    if isinstance(choices, dict):
        choices = choices.get("choices")
    if not isinstance(choices, list) or not choices or not all(
            isinstance(c, list) and c and all(isinstance(r, int) and 0 <= r < TOP_K for r in c)
            for c in choices):
        raise HeadsError(f"tree file {path}: expected a list of rank lists like [[0], [0, 1]] "
                         f"with ranks in [0, {TOP_K - 1}]")
    choices = [tuple(c) for c in choices]
    deepest = max(map(len, choices))
    if deepest > num_heads:
        raise HeadsError(f"tree file {path} is {deepest} deep but there are only {num_heads} "
                         "Medusa heads")
    return choices


def heads_path(spec: str) -> Path:
    """A local heads file/folder as is; 'org/name' is fetched from the hub."""
    local = Path(spec).expanduser()
    return local if local.exists() else model_folder(spec)


def build_builtin_heads(engine, tokenizer, data, folder, settings, console, **shared):
    """Train the heads, then calibrate their trees on the same corpus (`shared`: a template,
    examples and a teacher the add-ons of one target share, train.teacher)."""
    from ..train.medusa import calibrate, train_medusa
    train_medusa(engine, tokenizer, data, folder, console=console,
                 target_name=shared.pop("target_name", "builtin"), **settings, **shared)
    heads = load_heads(folder, engine.config.hidden_size, engine.config.vocab_size,
                       engine.lm_head)
    calibrate(engine, tokenizer, heads, data, folder, max_examples=CALIBRATION_EXAMPLES,
              **shared)


class Medusa(Method):
    name = "medusa"
    description = "Medusa-1: extra heads propose top-k candidates, verified as a sparse tree"
    options = {
        "heads": Option(None, str, "heads file or folder (medusa_lm_head.pt/.safetensors) or a "
                        "hub id"),
        "num_heads": Option(None, int, "use the first N heads (default: all)"),
        "tree": Option("budget64", str, "tree preset (budget16, budget32, budget64) or a "
                       "JSON/YAML file of rank lists"),
        "typical": Option(False, bool, "sampling: typical acceptance (lossy)"),
        "epsilon": Option(0.09, float, "typical: ε in p(x) > min(ε, δ·e^−H)"),
        "delta": Option(0.3, float, "typical: δ in p(x) > min(ε, δ·e^−H)")}
    # On the built-in model a wide tree costs more than it gains on a CPU.
    builtin_addon = Addon(settings={"num_heads": 4, "steps": 300, "lr": 3e-3, "batch_size": 16},
                          build=build_builtin_heads)
    builtin_options = {"heads": ADDON_FOLDER, "tree": "budget16"}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        cfg = engine.config
        heads = self.require("heads", "heads: --opt medusa.heads=PATH (train them with "
                                      "`specbench train medusa`)")
        if isinstance(heads, (str, Path)):
            folder = heads_path(str(heads))
            heads = load_heads(folder, cfg.hidden_size, cfg.vocab_size, engine.lm_head)
            accuracy = calibration_of(folder)
            o["heads"] = str(folder)
        else:
            accuracy = None
        if o["num_heads"] is not None:
            if not 1 <= o["num_heads"] <= len(heads):
                raise SpecbenchError(f"medusa: num_heads must be in [1, {len(heads)}]")
            heads = heads[:o["num_heads"]]
        self.heads = heads.to(engine.device, engine.dtype).eval().requires_grad_(False)
        choices = o["tree"] if isinstance(o["tree"], list) else \
            load_tree(o["tree"], len(self.heads), accuracy)
        if max(map(len, choices)) > len(self.heads):
            raise SpecbenchError(f"medusa: the tree is {max(map(len, choices))} deep but there "
                                 f"are only {len(self.heads)} heads")
        self.tree = Tree.from_choices(choices)
        # Typical acceptance does not keep the target's distribution.
        self.lossless = not o["typical"]

    def parameter_overhead(self) -> dict:
        params = sum(p.numel() for p in self.heads.parameters())
        return {"params": params, "bytes": params * self.engine.dtype.itemsize}

    def info(self) -> dict:
        return {"heads": len(self.heads), "tree_tokens": len(self.tree), "tree_depth": self.tree.depth}

    def candidates(self, hidden: torch.Tensor) -> list[int]:
        """Node tokens of the tree from each head's top-k at the last accepted position."""
        top = torch.stack([head(hidden)[0].float() for head in self.heads])
        ranks = top.topk(TOP_K, dim=-1).indices.tolist()       # [head][rank]
        return [0] + [ranks[len(c) - 1][c[-1]] for c in self.tree.choices[1:]]

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        state = DecodeState(self.engine, prompt_ids, max_new_tokens, self.eos_ids)
        h = state.hidden[:, -1]           # the heads read the last committed position
        while not state.done:
            with state.phase("draft"):
                candidates = self.candidates(h)
            h = verify_tree(state, self.tree, candidates, sampled_select=self.typical_path
                            if self.options["typical"] else None).hidden[-1:]
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
    return json.loads(file.read_text())["accuracy"] if file.is_file() else None
