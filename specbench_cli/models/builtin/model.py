"""The built-in target: a small Llama trained on the generated conversations, in the Vicuna format.

Training sees token ids built exactly as the runner builds a prompt at inference
(`prompts.build_prompt_ids`: BOS + the Vicuna text tokenized without special tokens), followed by
the answer tokenized on its own with a leading space, then EOS. Loss is on answer tokens only.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ...bench.prompts import vicuna_prompt
from ...train.precision import autocast
from .recipe import Recipe


# ---------------------------------------------------------------- encoding
def encode_conversations(tokenizer, conversations: Sequence[tuple[Sequence[str], Sequence[str]]]
                         ) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) per conversation of (turns, answers); the mask is 1 on answers and their EOS.

    A two-turn conversation is one sequence: the prompt of turn 2 is checked to begin with turn 1's
    prompt + answer + EOS, so both answers are learned in the context the runner will give them.
    Texts are tokenized in batches (fast) the same way `build_prompt_ids` tokenizes one prompt.
    """
    prompts, answers, where = [], [], []
    for c, (turns, replies) in enumerate(conversations):
        for k in range(len(turns)):
            prompts.append(vicuna_prompt(list(turns[: k + 1]), list(replies[:k]), eos=tokenizer.eos_token))
            answers.append(" " + replies[k])
            where.append(c)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    out: list[tuple[list[int], list[int]]] = [([], []) for _ in conversations]
    for c, p, a in zip(where, prompt_ids, answer_ids):
        ids, mask = out[c]
        prompt = [tokenizer.bos_token_id] + p
        if prompt[: len(ids)] != ids:
            raise ValueError("a later turn's prompt does not extend the earlier turns' tokens")
        answer = a + [tokenizer.eos_token_id]
        mask += [0] * (len(prompt) - len(ids)) + [1] * len(answer)
        ids[:] = prompt + answer
    return out


def make_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, steps: int,
                 rng: random.Random) -> list[list[int]]:
    """`steps` batches of example indices, each of similar lengths so little compute goes to padding.

    Epochs are shuffled; within a pool of 50 batches examples are sorted by length and cut into
    batches, then the batches are shuffled again so lengths do not drift during training.
    """
    batches: list[list[int]] = []
    pool = batch_size * 50
    while len(batches) < steps:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, pool):
            chunk = sorted(order[start:start + pool], key=lambda i: len(examples[i][0]))
            group = [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
            rng.shuffle(group)
            batches += group
    return batches[:steps]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and a mask of the positions whose next token is an answer token.

    Right padding needs no attention mask: causal attention keeps every real token from seeing a pad.
    """
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, (seq, mask) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        target[row, : len(seq) - 1] = torch.tensor(mask[1:], dtype=torch.bool)
    return ids, target


# ---------------------------------------------------------------- model and training
def make_model(recipe: Recipe, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=recipe.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # Start the (untied) LM head equal to the embeddings: a token's own embedding then scores that
    # token, so copying a token from the prompt is easy from the first step.
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    return model


def shared_prefix_len(examples: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every example has in common (BOS, the system text, "USER:")."""
    first = examples[0][0]
    n = min(len(ids) for ids, _ in examples)
    for ids, mask in examples:
        n = min(n, mask.index(1) - 1)  # the token before the first answer token must stay unshared
        while ids[:n] != first[:n]:
            n -= 1
    return n


def answer_loss(model: LlamaForCausalLM, ids: torch.Tensor, target: torch.Tensor, prefix: int = 0,
                reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the answer tokens (`target` as made by `collate`).

    The first `prefix` tokens are the same in every row (the Vicuna system text), so they run once
    and reach the rows through a shared KV cache: about a third less compute per step. The LM head
    runs only where there is an answer token to predict.
    """
    cache = None
    if prefix:
        cache = DynamicCache(config=model.config)
        model.model(input_ids=ids[:1, :prefix], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(ids.shape[0])
    hidden = model.model(input_ids=ids[:, prefix:], cache=cache, use_cache=prefix > 0).last_hidden_state
    where = target[:, prefix:-1]
    logits = model.lm_head(hidden[:, :-1][where])
    return F.cross_entropy(logits.float(), ids[:, prefix + 1:][where], reduction=reduction)


def timing_step(model: LlamaForCausalLM, examples, recipe: Recipe, pad_id: int):
    """One forward + backward of a training batch, no update (train.precision times it)."""
    batch = make_batches(examples, recipe.batch_size, 1, random.Random(recipe.seed))[0]
    ids, target = collate([examples[i] for i in batch], pad_id)
    prefix = shared_prefix_len(examples)

    def step():
        answer_loss(model, ids, target, prefix).backward()
    return step


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def train(model: LlamaForCausalLM, examples: list[tuple[list[int], list[int]]], recipe: Recipe,
          pad_id: int, on_step: Callable[[int, float], None] | None = None,
          precision: str = "fp32") -> list[float]:
    """AdamW over `recipe.steps` batches, the forward under `precision` (train.precision);
    returns the loss of every step."""
    # No weight decay on norms (1-d weights).
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=(0.9, 0.98), eps=1e-8)
    batches = make_batches(examples, recipe.batch_size, recipe.steps, random.Random(recipe.seed + 4))
    prefix = shared_prefix_len(examples)
    losses = []
    model.train()
    for step, batch in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        ids, target = collate([examples[i] for i in batch], pad_id)
        with autocast(precision):
            loss = answer_loss(model, ids, target, prefix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses
