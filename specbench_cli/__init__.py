"""specbench: Spec-Bench reproduced on one engine for every speculative decoding method."""

__version__ = "0.1.0"
