"""Training what the methods need (Kangaroo adapters, Medusa heads, ...) on a frozen target.

Each trainer is declared here, without importing torch (the CLI builds its `specbench train NAME`
commands from these at start-up), and lives in its own module: adding one is its module and
its line in TRAINERS.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import Option


@dataclass(frozen=True)
class Trainer:
    """`specbench train NAME`: `function(engine, tokenizer, data, out, *, target_name, console,
    steps, batch_size, max_len, seed, **options)` in module `train.<module>` trains on the frozen
    target and saves into `out`; it returns its final metrics."""
    name: str
    module: str
    function: str
    what: str                   # what it saves, for messages ("adapter")
    help: str                   # the command's help
    out_help: str
    options: dict               # its own options (Option), beyond those every trainer takes


TRAINERS = [
    Trainer("kangaroo", "kangaroo", "train_kangaroo", "adapter",
            "Train a Kangaroo adapter: soft cross-entropy against the target's next-token "
            "distribution on assistant tokens. Resumes from OUT/checkpoint.pt when interrupted.",
            "Output folder (config.json + model.safetensors).",
            {"exit_layer": Option(None, int, "Shallow layers under the adapter (default ~1/16 "
                                             "of the layers, ≥ 1)."),
             "lr": Option(5e-5, float, "Peak learning rate (AdamW, betas 0.9/0.95)."),
             "loss": Option("ce", str, "ce (soft cross-entropy, the paper's) or acceptance "
                                       "(1 − Σ min(p, q), expected rejection)."),
             "warmup": Option(None, int, "Warm-up steps (default min(2000, steps/10)).")}),
    Trainer("medusa", "medusa", "train_medusa", "heads",
            "Train Medusa heads: loss Σ 0.8^k·CE_k on assistant tokens, heads' output layers "
            "start as the LM head. Resumes from OUT/checkpoint.pt when interrupted.",
            "Output folder (medusa_lm_head.safetensors + config.json).",
            {"num_heads": Option(4, int, "Heads; head k predicts the token 2+k ahead."),
             "lr": Option(1e-3, float, "Peak learning rate (cosine schedule)."),
             "share_lm_head": Option(False, bool, "Heads reuse the target's LM head instead of "
                                                  "a vocab projection each (small targets)."),
             "warmup": Option(None, int, "Warm-up steps (default steps/10).")}),
    Trainer("sps", "sps", "train_sps", "drafter",
            "Train an SpS drafter: a tiny Llama from scratch with the target's tokenizer, "
            "distilled from the target on assistant tokens. Resumes from OUT/checkpoint.pt when "
            "interrupted.",
            "Output model folder (config.json, model.safetensors, the target's tokenizer).",
            {"hidden_size": Option(64, int, "Drafter width (a multiple of 32; heads of 32)."),
             "layers": Option(1, int, "Drafter decoder layers."),
             "distill": Option(True, bool, "Soft cross-entropy against the target's "
                                           "distribution; --no-distill: plain next-token loss."),
             "lr": Option(3e-3, float, "Peak learning rate (cosine schedule)."),
             "warmup": Option(None, int, "Warm-up steps (default steps/20).")}),
    Trainer("eagle", "eagle", "train_eagle", "head",
            "Train an EAGLE draft head: smooth-L1 regression of the target's next feature "
            "(weight 1.0) plus soft cross-entropy against its next-token distribution (weight "
            "0.1), uniform feature noise. Resumes from OUT/checkpoint.pt when interrupted.",
            "Output folder (config.json + model.safetensors).",
            {"lr": Option(3e-4, float, "Peak learning rate (AdamW, betas 0.9/0.95, cosine)."),
             "noise": Option(0.2, float, "Uniform noise on the input features, width "
                                         "noise·512/sequence length; 0 turns it off."),
             "warmup": Option(None, int, "Warm-up steps (default min(2000, steps/10)).")}),
]
