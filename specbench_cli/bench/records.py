"""What every question reader shares: the Question record, TaskError, and the suites (package
data) that say which subtasks (the report's columns) there are and in which order: Spec-Bench's
six, each a group of its categories, and SPEED-Bench's configs, each category its own."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import yaml

from ..errors import SpecbenchError
from ..files import checked

# Package data; the checkout's top-level tasks/ is a link to this folder.
SUITE_DIR = files("specbench_cli.bench") / "suites"


class TaskError(SpecbenchError):
    """Bad question file or selection; the message is one line for the user."""


def read_suite(name: str, shape: dict) -> tuple[dict, str]:
    """A suite file (package data) checked for `shape` (files.checked), and its path."""
    path = SUITE_DIR / f"{name}.yaml"
    return checked(yaml.safe_load(path.read_text(encoding="utf-8")), shape, str(path),
                   TaskError), str(path)


def category_lists(mapping: dict, section: str, where: str, key: str | None = None
                   ) -> dict[str, list[str]]:
    """{name: [category, ...]} of a suite file's `section`, each list checked (`key`: the
    field of each entry that holds it)."""
    out = {}
    for name, value in mapping.items():
        cats = (value.get(key) if isinstance(value, dict) else None) if key else value
        if not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
            raise TaskError(f"{where}: {section}.{name}{'.' + key if key else ''} must be a "
                            "list of category names")
        out[name] = cats
    return out


def load_suite(name: str = "spec_bench") -> dict:
    """A suite definition (package data): its subtasks and the question categories of each."""
    suite, where = read_suite(name, {"subtasks": dict})
    category_lists(suite["subtasks"], "subtasks", where)
    return suite


def load_speed_configs() -> dict[str, list[str]]:
    """SPEED-Bench's configs (package data) and each one's categories."""
    suite, where = read_suite("speed_bench", {"configs": dict})
    return category_lists(suite["configs"], "configs", where, key="categories")


SUITE = load_suite()
SUBTASKS: list[str] = list(SUITE["subtasks"])
CATEGORY_TO_SUBTASK = {cat: sub for sub, cats in SUITE["subtasks"].items() for cat in cats}
SPEED_CONFIGS = load_speed_configs()
# Column orders, first match wins (in_column_order): Spec-Bench's six, then each SPEED-Bench
# config's categories (the throughput configs share theirs).
COLUMN_ORDERS = [SUBTASKS, *map(list, dict.fromkeys(map(tuple, SPEED_CONFIGS.values())))]
KNOWN_SUBTASKS = list(dict.fromkeys(s for order in COLUMN_ORDERS for s in order))


def in_column_order(subtasks) -> list[str]:
    """The known subtasks among `subtasks`, in the order of the first suite that holds them all,
    so that a Spec-Bench run keeps its six columns as they were and a SPEED-Bench run shows its
    categories in the dataset's order (runs of both together: Spec-Bench's first). Unknown ones
    (an imported answer file's own categories) are left out: they count in `overall` only."""
    wanted = set(subtasks)
    order = next((o for o in COLUMN_ORDERS if wanted <= set(o)), KNOWN_SUBTASKS)
    return [s for s in order if s in wanted]


@dataclass(frozen=True)
class Question:
    question_id: int            # answer files are keyed by (question_id, repeat)
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None
    # The report column, set by the loader; left empty, Spec-Bench's mapping of the category.
    subtask: str = ""
    # The file's own id when the loader numbers the questions instead (SPEED-Bench's are
    # strings): question_id is then the row number.
    original_id: str | None = None

    def __post_init__(self):
        if not self.subtask:        # frozen: the one place the default is filled in
            object.__setattr__(self, "subtask",
                               CATEGORY_TO_SUBTASK.get(self.category, self.category))
