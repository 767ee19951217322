"""The target model as every method sees it: one Llama-family forward, one KV cache type."""

from .cache import KVCache
from .llama import Engine, EngineConfig, UnsupportedModel, sync

__all__ = ["Engine", "EngineConfig", "KVCache", "UnsupportedModel", "sync"]
