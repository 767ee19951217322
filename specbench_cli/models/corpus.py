"""A training corpus for a real target's add-ons, made offline by self-distillation.

The prompts come in the six Spec-Bench subtasks' shapes and are written from text that ships
with every CPython: `pydoc_data.topics`, the reference manual's help topics (79 topics, ~465 KB
of English prose; the Python documentation, PSF License Agreement). None of it is a Spec-Bench
question. The answers are the target's own greedy continuations under the run's template
(self-distillation, as Medusa-2 and EAGLE recommend: add-ons learn the distribution they will
be asked to predict, not a corpus's). Generation is batched (left-padded, Hugging Face
`generate`): this is data preparation, never timed.

Shapes (the Spec-Bench subtask each imitates):
- mt_bench: a two-turn instruction about a topic (write, explain, role-play, compare).
- translation: one sentence of the manual, to translate into French, German or Spanish
  (Spec-Bench translates German into English; no German text ships with Python).
- summarization: a passage of 3–8 paragraphs, to summarize.
- qa: a short question about a topic's title.
- math_reasoning: a GSM8K-style word problem from templates with seeded numbers.
- rag: a passage and a question to answer from it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path
from pydoc_data.topics import topics as raw

import torch
from rich.progress import Progress

from ..bench.prompts import build_prompt_ids

SUBTASK_SHAPES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
SOURCE = ("pydoc_data.topics (CPython's reference-manual help topics; Python documentation, "
          "PSF License Agreement)")


def topics() -> list[tuple[str, list[str]]]:
    """(title, paragraphs) per help topic, prose only: grammar blocks and code are dropped."""
    out = []
    for key in sorted(raw):
        text = raw[key]
        lines = text.splitlines()
        title = lines[0].strip() if lines else key
        paragraphs = []
        for block in re.split(r"\n\s*\n", text):
            block = " ".join(line.strip() for line in block.splitlines())
            # Prose: a sentence or more, mostly letters, not indented code or a rule line.
            if len(block) > 120 and block[0].isalpha() and "::=" not in block and \
                    sum(c.isalpha() or c == " " for c in block) > 0.85 * len(block):
                paragraphs.append(block)
        if paragraphs:
            out.append((title.strip('"*= ').replace('"', "") or key, paragraphs))
    return out


def sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", paragraph) if 40 <= len(s) <= 240]


MT_TEMPLATES = [
    ("Write a short blog post for beginners about {t} in Python.",
     "Now rewrite your post as three bullet points."),
    ("Explain {t} to a friend who has never programmed.",
     "Give one everyday analogy for it."),
    ("Imagine you are a Python teacher. Prepare a five-minute lesson on {t}.",
     "Write two quiz questions for the end of that lesson."),
    ("What are common mistakes people make with {t}, and how can they be avoided?",
     "Summarize your answer in one sentence."),
    ("Compare {t} in Python with how another language of your choice handles it.",
     "Which approach do you prefer, and why?"),
    ("Write a short story in which a programmer learns about {t}.",
     "Give the story a title and a moral."),
]
QA_TEMPLATES = ["What is {t} in Python?", "What is the purpose of {t}?",
                "When should I use {t} in Python?", "How does {t} work?",
                "Why does Python have {t}?", "Is {t} used often in Python programs?"]
LANGUAGES = ("French", "German", "Spanish")
NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo")
ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells")
MATH_TEMPLATES = [
    "{n} has {a} {i}. {n} buys {b} packs with {c} {i} in each pack. How many {i} does {n} have "
    "now?",
    "{n} reads {a} pages a day for {b} days, then {c} pages on the last day. How many pages did "
    "{n} read in total?",
    "A shop sells {i} at {a} dollars each. {n} buys {b} of them and pays with a {c}0-dollar note. "
    "How much change does {n} get?",
    "{n} had {c}{a} {i} and gave {b} to each of {a} friends. How many {i} are left?",
    "A train travels {a}0 kilometres per hour for {b} hours and then {c}0 kilometres per hour "
    "for {a} hours. How far does it travel?",
    "{n} saves {a} dollars every week. After {b} weeks {n} spends {c} dollars. How much money is "
    "left?",
]


def make_prompts(per_subtask: int, seed: int) -> list[dict]:
    """`per_subtask` prompts of each shape, deterministic for a seed: {"subtask", "turns"}."""
    rng = random.Random(seed)
    docs = topics()
    prompts = []

    def pick():
        return docs[rng.randrange(len(docs))]

    def passage(paragraphs, lo, hi):
        start = rng.randrange(max(1, len(paragraphs) - lo + 1))
        return "\n\n".join(paragraphs[start:start + rng.randint(lo, hi)])

    for _ in range(per_subtask):
        title, paragraphs = pick()
        first, second = rng.choice(MT_TEMPLATES)
        prompts.append({"subtask": "mt_bench", "turns": [first.format(t=title), second]})
        title, paragraphs = pick()
        candidates = [s for p in paragraphs for s in sentences(p)] or paragraphs
        prompts.append({"subtask": "translation", "turns": [
            f"Translate English to {rng.choice(LANGUAGES)}: {rng.choice(candidates)}"]})
        title, paragraphs = pick()
        prompts.append({"subtask": "summarization", "turns": [
            "Summarize the following text in a few sentences.\n\n" + passage(paragraphs, 3, 8)]})
        title, _ = pick()
        prompts.append({"subtask": "qa", "turns": [rng.choice(QA_TEMPLATES).format(t=title)]})
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        prompts.append({"subtask": "math_reasoning", "turns": [rng.choice(MATH_TEMPLATES).format(
            n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b, c=c)]})
        title, paragraphs = pick()
        prompts.append({"subtask": "rag", "turns": [
            f"{passage(paragraphs, 2, 5)}\n\nUsing only the text above, answer: "
            f"{rng.choice(QA_TEMPLATES).format(t=title)}"]})
    return prompts


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def generate_answers(folder: Path, tokenizer, template: str, prompts: list[dict],
                     max_new_tokens: int, batch_size: int, console=None) -> int:
    """Fill each prompt's "answers" with the target's greedy answers, turn by turn, in batches
    of similar prompt lengths. Returns the tokens generated."""
    from transformers import AutoModelForCausalLM    # seconds to import; only to build a corpus

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    generated = 0
    for p in prompts:
        p["answers"] = []
    turns = max(len(p["turns"]) for p in prompts)
    total = sum(len(p["turns"]) for p in prompts)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("self-distilled answers", total=total)
        for turn in range(turns):
            todo = [p for p in prompts if len(p["turns"]) > turn]
            ids = {id(p): build_prompt_ids(tokenizer, template, p["turns"][:turn + 1],
                                           p["answers"]) for p in todo}
            todo.sort(key=lambda p: len(ids[id(p)]))
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                width = max(len(ids[id(p)]) for p in chunk)
                batch = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, p in enumerate(chunk):
                    seq = ids[id(p)]
                    batch[row, width - len(seq):] = torch.tensor(seq)
                    mask[row, width - len(seq):] = 1
                with torch.inference_mode():
                    out = model.generate(input_ids=batch, attention_mask=mask, do_sample=False,
                                         max_new_tokens=max_new_tokens, pad_token_id=pad,
                                         eos_token_id=eos)
                for row, p in enumerate(chunk):
                    new = out[row, width:].tolist()
                    if eos in new:
                        new = new[:new.index(eos)]
                    generated += len(new)
                    p["answers"].append(tokenizer.decode(new, skip_special_tokens=True).strip())
                progress.update(task, advance=len(chunk))
    return generated


def build_corpus(folder: Path, tokenizer, template: str, out: Path, recipe: dict,
                 console=None) -> Path:
    """corpus.jsonl ({"subtask", "turns", "answers"} per conversation, the layout `train`
    reads) and corpus.json (recipe, source, counts, timing) in `out`."""
    started = time.perf_counter()
    prompts = make_prompts(recipe["per_subtask"], recipe["seed"])
    tokens = generate_answers(folder, tokenizer, template, prompts, recipe["max_new_tokens"],
                              recipe["batch_size"], console)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "corpus.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (out / "corpus.json").write_text(json.dumps({
        "recipe": recipe, "source": SOURCE, "template": template,
        "conversations": len(prompts), "answer_tokens": tokens,
        "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return path
