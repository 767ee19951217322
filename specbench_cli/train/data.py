"""Conversation corpora → token sequences with a mask of the assistant's tokens.

Accepted inputs (JSON array or JSONL, one conversation each):
- ShareGPT: {"conversations": [{"from": "human"|"gpt", "value": ...}, ...]}
- the built-in training split: {"turns": [...user...], "answers": [...assistant...]}
- role/content messages: {"messages": [{"role": "user"|"assistant", "content": ...}, ...]}
Sequences follow the run's prompt template (vicuna_v1.1 unless told: the chat template for
models run with one), so training sees what decoding sees.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bench.prompts import VICUNA_SYSTEM, build_prompt_ids
from ..errors import SpecbenchError
from ..files import json_lines, read_text
from .teacher import Batch

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "model"}


class DataError(SpecbenchError):
    pass


@dataclass
class Example:
    ids: list[int]
    assistant: list[bool]     # True where the token is part of an assistant answer (EOS included)


def read_records(path: Path) -> list:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training data {path} does not exist")
    text = read_text(path, DataError)
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from None
    return [record for _, record in json_lines(path, DataError)]


def to_pairs(record: dict) -> list[tuple[str, str]]:
    """(user, assistant) pairs of one conversation in any accepted layout; [] if none."""
    if "turns" in record and "answers" in record:
        return list(zip(record["turns"], record["answers"]))
    messages = record.get("conversations") or record.get("messages") or []
    pairs, user = [], None
    for m in messages:
        role = m.get("from", m.get("role"))
        text = m.get("value", m.get("content"))
        if role in USER_ROLES:
            user = text
        elif role in ASSISTANT_ROLES and user is not None:
            pairs.append((user, text))
            user = None
    return pairs


def encode(tokenizer, pairs: list[tuple[str, str]], max_len: int,
           template: str = "vicuna_v1.1") -> Example:
    """The conversation as the run's template lays it out (`prompts.build_prompt_ids`), each
    answer + EOS masked in. Vicuna v1.1: BOS SYSTEM USER: q ASSISTANT: a</s>USER: ..."""
    if template != "vicuna_v1.1":
        return encode_with_template(tokenizer, pairs, max_len, template)

    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    mask = [False] * len(ids)
    for i, (question, answer) in enumerate(pairs):
        prompt = (VICUNA_SYSTEM + " " if i == 0 else "") + f"USER: {question} ASSISTANT:"
        reply = tok(" " + answer) + [tokenizer.eos_token_id]
        part = tok(prompt)
        ids += part + reply
        mask += [False] * len(part) + [True] * len(reply)
    return Example(ids[:max_len], mask[:max_len])


def encode_with_template(tokenizer, pairs: list[tuple[str, str]], max_len: int,
                         template: str) -> Example:
    """Any other template (the tokenizer's chat template): each turn's prompt is rendered with
    the earlier answers, exactly as a run renders it; what it adds to the sequence so far is
    the prompt part. Should a rendering not extend the sequence (a template that rewrites
    history), the sequence restarts from that turn's prompt."""
    ids, mask = [], []
    turns = [q for q, _ in pairs]
    answers = [a for _, a in pairs]
    for i in range(len(pairs)):
        prompt = build_prompt_ids(tokenizer, template, turns[:i + 1], answers[:i])
        if prompt[:len(ids)] != ids:
            ids, mask = [], []
        reply = tokenizer(answers[i], add_special_tokens=False)["input_ids"] + \
            [tokenizer.eos_token_id]
        mask += [False] * (len(prompt) - len(ids)) + [True] * len(reply)
        ids = prompt + reply
    return Example(ids[:max_len], mask[:max_len])


def load_examples(paths: list[Path], tokenizer, max_len: int,
                  template: str = "vicuna_v1.1", limit: int | None = None) -> list[Example]:
    """Every conversation with an assistant turn, encoded; the first `limit` when given."""
    examples = []
    for path in paths:
        for record in read_records(path):
            pairs = to_pairs(record) if isinstance(record, dict) else []
            if pairs:
                ex = encode(tokenizer, pairs, max_len, template)
                if any(ex.assistant):
                    examples.append(ex)
            if limit is not None and len(examples) >= limit:
                return examples
    if not examples:
        raise DataError(f"no conversations with assistant turns in {', '.join(map(str, paths))}")
    return examples


def data_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def batches(examples: list[Example], batch_size: int, seed: int):
    """Endless shuffled `teacher.Batch`es: ids (b, n) right-padded with 0, assistant mask
    (b, n) bool, the examples' indices.

    Right padding needs no attention mask: with causal attention no real token sees a pad."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1,
                       batch_size):
            chunk = [examples[j] for j in order[i:i + batch_size]]
            n = max(len(e.ids) for e in chunk)
            ids = torch.zeros(len(chunk), n, dtype=torch.long)
            mask = torch.zeros(len(chunk), n, dtype=torch.bool)
            for row, e in enumerate(chunk):
                ids[row, :len(e.ids)] = torch.tensor(e.ids)
                mask[row, :len(e.ids)] = torch.tensor(e.assistant)
            yield Batch(ids, mask, [j for j in order[i:i + batch_size]])
