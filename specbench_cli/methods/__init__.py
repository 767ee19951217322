"""Decoding methods, one file each, behind the `Method` protocol."""

from .base import Generation, Method
from .kangaroo import Kangaroo
from .llma import LLMA
from .pld import PromptLookup
from .vanilla import Vanilla

METHODS: dict[str, type[Method]] = {m.name: m for m in (Vanilla, PromptLookup, LLMA, Kangaroo)}


def parse_methods(spec: str) -> list[str]:
    """'vanilla,pld' → checked names; vanilla is always run (every speedup divides by it)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return ["vanilla"] + [n for n in dict.fromkeys(names) if n != "vanilla"]


__all__ = ["METHODS", "Generation", "Method", "parse_methods"]
