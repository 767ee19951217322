"""How a run's rows are named: a method, a sweep point of its options, a batch size.

    pld                          the method, batch size 1
    kangaroo@exit_layer=1        a point of a --sweep grid (its own options)
    pld+b4                       the method at --batch-size 4
    pld@budget=8                 the method verifying at most 8 tokens a step (--budget 8)
    pld@budget=auto+b4           its budget fitted to this device at batch size 4
"""

from __future__ import annotations

import re


def base_name(name: str) -> str:
    """'kangaroo@exit_layer=1,threshold=0.4' (a sweep point) → 'kangaroo'; 'pld+b4' → 'pld'."""
    return unbatched(name).split("@", 1)[0]


# A method run at batch size B > 1 is named with a suffix: 'pld+b4', 'kangaroo@threshold=0.4+b4'.
BATCH_SUFFIX = re.compile(r"\+b(\d+)$")


def batched(name: str, size: int) -> str:
    """The name of `name` run at batch size `size` (batch 1 keeps the plain name)."""
    return name if size == 1 else f"{name}+b{size}"


def unbatched(name: str) -> str:
    """'pld+b4' → 'pld' (the same method, decoded four sequences at a time)."""
    return BATCH_SUFFIX.sub("", name)


def batch_size_of(name: str) -> int:
    match = BATCH_SUFFIX.search(name)
    return int(match.group(1)) if match else 1


# --budget's rows: 'eagle@budget=16', 'kangaroo@threshold=0.4,budget=auto+b4'.
BUDGET = re.compile(r"[@,]budget=(\w+)$")


def with_budget(name: str, budget) -> str:
    """`name` (a method or a sweep point) verifying at most `budget` tokens ('auto': fitted)."""
    return f"{name}{',' if '@' in name else '@'}budget={budget}"


def budget_of(name: str) -> str | None:
    """'pld@budget=8+b4' → '8', 'pld@budget=auto' → 'auto', 'pld' → None."""
    match = BUDGET.search(unbatched(name))
    return match.group(1) if match else None


def without_budget(name: str) -> str:
    """'pld@budget=auto+b4' → 'pld'; 'kangaroo@threshold=0.4,budget=8' → 'kangaroo@threshold=0.4'."""
    return BUDGET.sub("", unbatched(name))
