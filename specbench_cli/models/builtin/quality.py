"""How well the built-in model does its tasks: answer loss and per-subtask accuracy, greedy.

A speedup measured on a model that babbles would say little about real models, so `prepare`
checks that the model really copies, translates, recalls and adds before anyone benchmarks it.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from ...bench.prompts import build_prompt_ids
from .model import answer_loss, collate, encode_conversations
from .tasks_gen import SUBTASKS, Conversation

# What each subtask's score means (shown in the quality table).
METRICS = {
    "mt_bench": "word overlap F1, both turns",
    "translation": "word accuracy",
    "summarization": "gold sentences reproduced",
    "qa": "fact recalled",
    "math_reasoning": "final answer",
    "rag": "place and value copied",
}


@torch.no_grad()
def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy decoding with the model's own KV cache; stops after EOS (not included)."""
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        if token == eos_id:
            break
        tokens.append(token)
        out = model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
    return tokens


def answer_conversation(model, tokenizer, turns: Sequence[str], max_new_tokens: int) -> list[str]:
    """The model's answers to every turn, each turn seeing its own earlier answers (as the runner)."""
    answers: list[str] = []
    for k in range(len(turns)):
        ids = build_prompt_ids(tokenizer, "vicuna_v1.1", list(turns[: k + 1]), answers)
        new = greedy(model, ids, max_new_tokens, tokenizer.eos_token_id)
        answers.append(tokenizer.decode(new).strip())
    return answers


# ---------------------------------------------------------------- scores in [0, 1]
def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def word_f1(pred: str, gold: str) -> float:
    p, g = _words(pred), _words(gold)
    common = sum(min(p.count(w), g.count(w)) for w in set(g))
    return 0.0 if common == 0 else 2 * common / (len(p) + len(g))


def word_accuracy(pred: str, gold: str) -> float:
    """Share of gold words at their own position (a wrong word order costs)."""
    p, g = _words(pred), _words(gold)
    return sum(a == b for a, b in zip(p, g)) / max(len(p), len(g), 1)


def final_number(text: str) -> str | None:
    m = re.search(r"####\s*(-?\d+)", text)
    return m.group(1) if m else None


def key_facts(subtask: str, gold: str) -> list[str]:
    """The words a QA or RAG answer must get right: the recalled fact; the place and its value."""
    if subtask == "qa":
        return _words(gold)[-1:]  # "... lives in Brask." -> brask
    words = _words(gold)  # "Lake Vorn is 12 meters deep." -> vorn, 12
    return [words[1], next(w for w in words[2:] if w not in RAG_GLUE)]


# The words of RAG fact sentences that are not the place or the value.
RAG_GLUE = {"is", "in", "has", "lies", "near", "closed", "on", "free", "sells", "was", "built", "by", "a"}


def score(subtask: str, preds: list[str], golds: Sequence[str]) -> float:
    """Score in [0, 1] of one question's answers (`preds`) against the gold ones."""
    pred, gold = preds[0], golds[0]
    if subtask == "mt_bench":
        return sum(word_f1(p, g) for p, g in zip(preds, golds)) / len(golds)
    if subtask == "translation":
        return word_accuracy(pred, gold)
    if subtask == "summarization":
        gold_sentences = _sentences(gold)
        return sum(s in pred for s in gold_sentences) / len(gold_sentences)
    if subtask == "math_reasoning":
        return float(final_number(pred) == final_number(gold))
    if subtask in ("qa", "rag"):
        keys, words = key_facts(subtask, gold), set(_words(pred))
        return sum(k in words for k in keys) / len(keys)
    raise ValueError(f"unknown subtask {subtask!r}")


# ---------------------------------------------------------------- report
def held_out_loss(model, tokenizer, conversations: list[Conversation]) -> float:
    """Mean cross-entropy per answer token over the held-out conversations (gold turns)."""
    examples = encode_conversations(tokenizer, [(c.turns, c.answers) for c in conversations])
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            ids, target = collate(examples[start:start + 16], tokenizer.pad_token_id)
            total += float(answer_loss(model, ids, target, reduction="sum"))
            count += int(target.sum())
    return total / count


def evaluate(model, tokenizer, heldout: list[Conversation], per_subtask: int, max_new_tokens: int,
             on_question: Callable[[], None] | None = None) -> dict:
    """Loss on all held-out answers; greedy score and exact-match rate on `per_subtask` of each."""
    model.eval()
    report: dict = {"loss": round(held_out_loss(model, tokenizer, heldout), 4), "subtasks": {}}
    for subtask in SUBTASKS:
        convs = [c for c in heldout if c.subtask == subtask][:per_subtask]
        scores, exact = [], []
        for c in convs:
            preds = answer_conversation(model, tokenizer, c.turns, max_new_tokens)
            scores.append(score(subtask, preds, c.answers))
            exact.append(all(p == g for p, g in zip(preds, c.answers)))
            if on_question:
                on_question()
        report["subtasks"][subtask] = {
            "n": len(convs),
            "metric": METRICS[subtask],
            "score": round(sum(scores) / max(1, len(convs)), 4),
            "exact": round(sum(exact) / max(1, len(convs)), 4),
        }
    return report
