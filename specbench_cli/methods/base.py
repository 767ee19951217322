"""The protocol every decoding method follows, its declarations (options, statistics, the
built-in add-on), and the record of one generation."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

from ..engine import Engine
from ..engine.batch import BatchEngine, run_batch
from ..errors import SpecbenchError
from ..options import Option, option_value
from ..train import Trainer
from .verify import GREEDY, DecodeState, Decoding, Generation


@dataclass(frozen=True)
class Statistic:
    """A rate the report shows for a method: scale × Σ count / Σ per over every turn's stats."""
    label: str
    count: str
    per: str
    scale: float
    unit: str
    help: str


# In Method.builtin_options: replaced by the folder the method's add-on was built in;
# "{addon:NAME}" by method NAME's (a method that drafts with another's trained module).
ADDON_FOLDER = "{addon}"


def fill_addons(options: dict, method: str, addons: dict) -> dict:
    """`options` with add-on placeholders replaced by folders from `addons` (method → folder);
    a placeholder whose add-on was not built becomes None (the method then says what it
    needs)."""
    def fill(value):
        if not (isinstance(value, str) and value.startswith("{addon") and value.endswith("}")):
            return value
        owner = value[len("{addon:"):-1] if value != ADDON_FOLDER else method
        return str(addons[owner]) if owner in addons else None
    return {key: fill(value) for key, value in options.items()}


@dataclass(frozen=True)
class Addon:
    """What `specbench prepare` builds for a method on the built-in benchmark: `build(engine,
    tokenizer, data, folder, settings, console, examples=, teacher=)` writes into `folder`
    with the frozen built-in target, its training conversations (`examples`) and the target's
    cached view of them (`teacher`, train.teacher.CachedTeacher; `teacher_layers` names the
    hidden states it must hold besides the final ones). A change of `settings` rebuilds."""
    settings: dict
    build: Callable
    uses_teacher: bool = True
    teacher_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Budget:
    """A method's verification width, declared once: the budget is the tokens one verification
    forward takes (the pending token plus every drafted token or tree node), the quantity whose
    cost the profile's c(n) measures. `to_options(n, options)` gives the options that verify at
    most n tokens a step, given the method's current ones (depth and width may follow the
    size); `of(options)` is the budget the options give (None where they do not say, e.g. a
    tree file). `option` and `how` are what `specbench list` shows."""
    option: str
    how: str
    to_options: Callable[[int, dict], dict]
    of: Callable[[dict], int | None]


def draft_budget(option: str) -> Budget:
    """A budget set by an option that counts the drafts (the block adds the pending token)."""
    return Budget(option, f"{option} = budget − 1", lambda n, o: {option: n - 1},
                  lambda o: o[option] + 1)


def node_budget(option: str) -> Budget:
    """A budget set by an option that counts the block's tokens, the pending one included."""
    return Budget(option, f"{option} = budget", lambda n, o: {option: n}, lambda o: o[option])


# Budgets a run may give: a step verifies the pending token and at least one draft, and no
# block may exceed the rows the cache reserves past the answer (verify.DRAFT_HEADROOM).
SMALLEST_BUDGET, LARGEST_BUDGET = 2, 128


@dataclass(frozen=True)
class TargetAddon:
    """A method's add-on for a named real target (`specbench prepare NAME --addons`,
    models/target_addons.py): the settings its `builtin_addon.build` runs with there, and the
    options a run on that target then gives the method (ADDON_FOLDER: the add-on's folder)."""
    settings: dict
    options: dict


class Method:
    """A decoding method on the engine. Subclasses set `name`, `description`, `options` and
    implement `generate`; `statistics`, `trainer`, `builtin_addon`, `builtin_options`,
    `target_addons` and `budget` (every method that drafts) are optional. Lossless methods must return exactly vanilla's greedy
    tokens."""

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    statistics: ClassVar[tuple[Statistic, ...]] = ()
    builtin_addon: ClassVar[Addon | None] = None
    # Options the built-in default run gives the method unless the user names others (its
    # add-on as ADDON_FOLDER; sizes for a CPU and the 1.6M-parameter model).
    builtin_options: ClassVar[dict] = {}
    trainer: ClassVar[Trainer | None] = None          # `specbench train NAME`
    target_addons: ClassVar[dict[str, TargetAddon]] = {}    # by named target ("smollm2")
    budget: ClassVar[Budget | None] = None      # what sets its verification width (`--budget`)
    lossless: ClassVar[bool] = True
    defaults: ClassVar[dict] = {}       # derived from `options`

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.defaults = {key: opt.default for key, opt in cls.options.items()}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise SpecbenchError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(self.defaults) or 'none'}")
        self.engine = engine
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        # Types and bounds checked here, by whatever route the options came (the CLI, a run
        # config, the Python API), against the one declaration of each.
        declared = type(self).options
        self.options = {**self.defaults, **{
            key: option_value(declared[key], value, f"{self.name}.{key}")
            for key, value in options.items()}}

    def require(self, option: str, how: str):
        """The value of an option the method cannot run without; `how` tells how to get one."""
        value = self.options[option]
        if value is None:
            raise SpecbenchError(f"{self.name} needs {how}")
        return value

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        """Up to max_new_tokens after the prompt, decoded as `decoding` says (greedy by
        default; every DecodeState is made by new_state, which takes it)."""
        raise NotImplementedError

    def new_state(self, prompt_ids: list[int], max_new_tokens: int, decoding: Decoding,
                  prefill=None):
        """The generation's DecodeState on this method's engine: the prompt prefilled (by
        `prefill(ids, cache)` when given), the first token chosen as `decoding` says."""
        return DecodeState(self.engine, prompt_ids, max_new_tokens, self.eos_ids, decoding,
                           prefill)

    def parts(self) -> list["Method"]:
        """The methods this one drafts with (SAMD's EAGLE head): they follow it onto another
        engine (on_engine)."""
        return []

    def reset(self):
        """Forget what earlier generations taught. Methods that learn across questions (Token
        Recycling's matrix, SuffixDecoding's global tree) override it, so that the runner can
        start every pass (one repeat at one batch size) from the same state."""

    def info(self) -> dict:
        """Static facts worth recording in run.json (tree size, exit layer, ...)."""
        return {}

    def parameter_overhead(self) -> dict:
        """Extra parameters (count) and storage (bytes) the method adds to the target."""
        return {"params": 0, "bytes": 0}

    @classmethod
    def declared_statistics(cls) -> list[dict]:
        return [asdict(s) for s in cls.statistics]


@contextmanager
def on_engine(method: Method, engine):
    """Run `method`, and the methods it drafts with (SAMD's EAGLE head), on another view of its
    engine for a while (engine/batch.BatchEngine: several sequences at once)."""
    held = [method, *method.parts()]
    saved = [m.engine for m in held]
    for m in held:
        m.engine = engine
    try:
        yield method
    finally:
        for m, e in zip(held, saved):
            m.engine = e


def generate_batch(method: Method, prompts: list[list[int]], max_new_tokens: int | list[int],
                   width: int | None = None, decoding: Decoding = GREEDY) -> list[Generation]:
    """One generation per prompt (`max_new_tokens` for all, or a list: one per prompt), the
    sequences decoded together, at most `width` at once (engine/batch.py); each equals what
    `method.generate` gives it alone."""
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else \
        [max_new_tokens] * len(prompts)
    engine = method.engine
    with on_engine(method, BatchEngine(engine)):
        return run_batch(engine, [lambda p=p, n=n: method.generate(p, n, decoding)
                                  for p, n in zip(prompts, budgets)], width)
