"""Every knob of the built-in benchmark in one place; its hash names the folder it is built into."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

# Bump when the generator, the tokenizer or the training code changes what a recipe produces.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    # tasks
    n_train: int = 36000  # training conversations, shared out by `mix`
    # Share of each subtask in training: the copy tasks and math take longest to learn.
    mix: tuple[tuple[str, float], ...] = (("mt_bench", 1.0), ("translation", 0.5), ("summarization", 1.5),
                                          ("qa", 0.75), ("math_reasoning", 1.25), ("rag", 1.0))
    n_heldout: int = 30  # held-out questions per subtask
    # tokenizer
    vocab_size: int = 2048  # an upper bound: the corpus's few hundred words need ~1.5k tokens
    # model: narrow and several layers deep, so early-exit methods have layers to skip
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 6
    num_heads: int = 4
    max_positions: int = 512
    # training (about 3 minutes on 2 idle CPU cores)
    steps: int = 2600
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    # quality report
    eval_per_subtask: int = 30
    max_new_tokens: int = 120

    def hash(self) -> str:
        blob = json.dumps({"version": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def train_counts(self) -> dict[str, int]:
        total = sum(w for _, w in self.mix)
        return {name: round(self.n_train * w / total) for name, w in self.mix}

    def as_dict(self) -> dict:
        return {"version": RECIPE_VERSION, **asdict(self)}


def tiny_recipe(seed: int = 0) -> Recipe:
    """A recipe that builds in seconds (for tests): same pipeline, toy sizes, an untrained-ish model."""
    return replace(Recipe(seed=seed), n_train=240, n_heldout=20, vocab_size=600, hidden_size=32,
                   intermediate_size=64, num_layers=2, num_heads=2, steps=3, batch_size=4,
                   warmup_steps=1, eval_per_subtask=1, max_new_tokens=8)
