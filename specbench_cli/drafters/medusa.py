"""Medusa heads (Cai et al., 2024, "Medusa: Simple LLM Inference Acceleration Framework with
Multiple Decoding Heads"): head k is a ResBlock plus a vocab projection over the target's last
hidden state that predicts token t+2+k; a strict loader for ours and the official
medusa_lm_head files; and the sparse trees of their top-k candidates (presets grown from
per-rank accuracies, or a file of rank tuples)."""

from __future__ import annotations

import heapq
import re
from pathlib import Path

import torch
import yaml
from torch import nn

from ..engine.load import checkpoint_tensors, load_state
from ..errors import SpecbenchError
from ..files import read_text
from ..models.targets import model_folder
from .addon_folder import check_finished

TOP_K = 10


class HeadsError(SpecbenchError):
    pass


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); zero-initialised so a fresh head starts as the LM head. With
    `inputs` > 1 (Hydra's heads read several vectors side by side) the residual is a linear map
    of them too (`res_connection`)."""

    def __init__(self, hidden: int, inputs: int = 1):
        super().__init__()
        self.linear = nn.Linear(hidden * inputs, hidden)
        nn.init.zeros_(self.linear.weight)
        self.res_connection = nn.Linear(hidden * inputs, hidden) if inputs > 1 else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x):
        return self.res_connection(x) + self.act(self.linear(x))


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
    check_finished(path if path.is_dir() else path.parent, "Medusa heads", HeadsError)
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
PRESET = re.compile(r"budget(\d+)")       # a tree grown for N tokens, root included


def preset_size(spec) -> int | None:
    """budgetN → N; None for anything else (a tree file, a list of rank tuples)."""
    match = PRESET.fullmatch(spec) if isinstance(spec, str) else None
    return int(match.group(1)) if match else None


def load_tree(spec: str, num_heads: int, accuracy=None) -> list[tuple[int, ...]]:
    """A preset budgetN (the greedy tree of N tokens, root included, for these accuracies:
    budget16, budget32, budget64 are Medusa's) or a JSON/YAML file holding a list of rank
    tuples."""
    size = preset_size(spec)
    if size is not None:
        if size < 2:
            raise HeadsError(f"medusa tree {spec}: a tree holds the root and at least one node")
        return grow_tree((accuracy or DEFAULT_ACCURACY)[:num_heads], size)
    path = Path(spec)
    if not path.is_file():
        raise HeadsError(f"medusa tree {spec}: not a preset (budgetN: budget16, budget32, "
                         "budget64, ...) or a file")
    try:
        choices = yaml.safe_load(read_text(path, HeadsError))
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
