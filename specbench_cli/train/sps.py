"""SpS drafter training: a tiny Llama, from scratch, distilled from the frozen target's full
next-token distribution (soft cross-entropy on assistant tokens, as for Kangaroo's adapter):
the soft targets carry more than the corpus's one-hot tokens, and agreeing with the target's
greedy choice is all that acceptance asks. Saved as an ordinary Hugging Face model folder
(config.json, model.safetensors, the target's tokenizer), so it loads like any model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Engine, EngineConfig
from ..errors import SpecbenchError
from .data import batches, data_hash, load_examples
from .loop import TrainSettings, finish, train
from .teacher import LiveTeacher

HEAD_DIM = 32


def drafter_config(target: EngineConfig, hidden_size: int, layers: int,
                   intermediate_size: int | None = None) -> dict:
    """A LlamaConfig-shaped config.json: the target's vocabulary, special ids, RoPE and
    context length; heads of 32 dimensions; an MLP ~2.75× wide as Llama's."""
    if hidden_size < HEAD_DIM or hidden_size % HEAD_DIM or layers < 1:
        raise SpecbenchError(f"drafter hidden size must be a multiple of {HEAD_DIM} and layers "
                             f"at least 1 (got {hidden_size}, {layers})")
    heads = hidden_size // HEAD_DIM
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": target.vocab_size, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size or 16 * round(2.75 * hidden_size / 16),
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "head_dim": HEAD_DIM, "hidden_act": "silu",
            "rms_norm_eps": target.rms_norm_eps, "rope_theta": target.rope_theta,
            "rope_scaling": target.rope_scaling,
            "max_position_embeddings": target.max_position_embeddings,
            "bos_token_id": target.bos_token_id, "eos_token_id": target.eos_token_id,
            "tie_word_embeddings": False}


def new_drafter(config: dict) -> Engine:
    """Random init as Llama's (normal, std 0.02; norms at one)."""
    drafter = Engine(EngineConfig.from_hf(config))
    with torch.no_grad():
        for p in drafter.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return drafter


def sps_step(target: Engine, drafter: Engine, teacher: LiveTeacher, distill: bool = True):
    """Soft cross-entropy against the target's distribution, or (distill=False) plain
    next-token cross-entropy on the corpus, which skips the target's forward: about as good
    where the target has learnt its corpus by heart (the built-in model)."""
    def step(batch):
        ids, mask = batch.ids.to(target.device), batch.mask.to(target.device)
        if not distill:     # position t predicts token t+1
            labels = ids[:, 1:][mask[:, 1:]]
            student = drafter(ids[:, :-1], None, 0)[mask[:, 1:]]
            agree = (student.argmax(-1) == labels).float().mean()
            return F.cross_entropy(student, labels), {"top1_agree": float(agree)}
        teacher_says = teacher.distribution(batch)
        student = drafter(ids, None, 0)[mask]
        return teacher_says.soft_cross_entropy(student), \
            {"top1_agree": teacher_says.agreement(student)}
    return step


def train_sps(engine: Engine, tokenizer, data: list[Path], out: Path, *, hidden_size: int = 64,
              layers: int = 1, intermediate_size: int | None = None, steps: int = 2000,
              lr: float = 3e-3, warmup: int | None = None, batch_size: int = 16,
              max_len: int = 512, distill: bool = True, seed: int = 0, target_name: str = "",
              console=None, template: str = "vicuna_v1.1", examples=None,
              teacher: LiveTeacher | None = None, checkpoint_every: int = 100) -> dict:
    out = Path(out)
    config = drafter_config(engine.config, hidden_size, layers, intermediate_size)
    examples = examples or load_examples(data, tokenizer, max_len, template)
    torch.manual_seed(seed)
    drafter = new_drafter(config).to(engine.device)
    engine.requires_grad_(False)
    settings = TrainSettings(steps=steps, lr=lr, warmup=warmup if warmup is not None else
                             steps // 20, weight_decay=0.01, clip_norm=1.0,
                             checkpoint_every=checkpoint_every)
    metrics = train(drafter, sps_step(engine, drafter, teacher or LiveTeacher(engine), distill),
                    batches(examples, batch_size, seed), settings, out, console,
                    label="sps drafter")
    config["specbench"] = {"target": target_name, "data_sha256": data_hash(data),
                           "steps": steps, "lr": lr, "distill": distill, "template": template,
                           "examples": len(examples), "final": metrics}
    tokenizer.save_pretrained(str(out))     # the target's own: the method compares them
    finish(out, drafter, config)            # last: it marks the folder finished
    return metrics
