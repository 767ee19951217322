"""The protocol every decoding method follows, and the record of one generation."""

from __future__ import annotations

from ..errors import SpecbenchError
from dataclasses import dataclass, field
from typing import ClassVar

from ..engine import Engine


@dataclass
class Generation:
    tokens: list[int]                 # new tokens, through the first EOS when one was produced
    accept_lengths: list[int]         # tokens committed by each target forward (bonus included)
    stats: dict = field(default_factory=dict)   # method-specific counters (drafted tokens, ...)

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)


class Method:
    """A decoding method on the engine. Subclasses set `name` and `defaults` (their options) and
    implement `generate`. Lossless methods must return exactly vanilla's greedy tokens."""

    name: ClassVar[str]
    description: ClassVar[str]
    defaults: ClassVar[dict] = {}
    lossless: ClassVar[bool] = True

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise SpecbenchError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.defaults) or 'none'}")
        self.engine = engine
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        self.options = {**self.defaults, **options}

    def require(self, option: str, how: str):
        """The value of an option the method cannot run without; `how` tells how to get one."""
        value = self.options[option]
        if value is None:
            raise SpecbenchError(f"{self.name} needs {how}")
        return value

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        raise NotImplementedError

    def info(self) -> dict:
        """Static facts worth recording in run.json (tree size, exit layer, ...)."""
        return {}

    def parameter_overhead(self) -> dict:
        """Extra parameters (count) and storage (bytes) the method adds to the target."""
        return {"params": 0, "bytes": 0}
