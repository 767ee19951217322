"""Decoding the questions: the runner (every method on one engine, answer files, resume), its
sharding over Ray workers, the sampling check, and the device profile the cost model reads."""
