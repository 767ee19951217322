"""Seeded generator of the six Spec-Bench subtasks over the invented world.

Each subtask keeps the character that matters for speculative decoding: summaries and RAG answers
copy sentences from the prompt, translations must be produced word by word in a new order, math is
written-out stepwise arithmetic, QA recalls facts learned in training, and mt_bench has a second
turn that reworks the first answer. Texts stay short because the model that learns them is tiny.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import world as W
from .world import World, make_world

SUBTASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class Conversation:
    subtask: str
    category: str
    turns: tuple[str, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """What the held-out questions keep for themselves, so no held-out question is a training one."""

    qa_heldout_template: dict[tuple[int, str], int]  # (person, fact) -> question template index
    roleplay_people: tuple[int, ...]  # people whose role-play prompts are held out

    def qa_templates(self, person: int, fact: str, heldout: bool) -> list[int]:
        k = self.qa_heldout_template[(person, fact)]
        return [k] if heldout else [i for i in range(len(QA_TEMPLATES[fact])) if i != k]


def _and_list(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# ---------------------------------------------------------------- mt_bench (two turns)
# A first-turn template gives (category, question, items, render); the second turn reworks the
# items (reverses or shortens them) and renders them again, so turn 2 leans on turn 1's text.
REWORKS: list[tuple[str, Callable[[list[str]], list[str]]]] = [
    ("Rewrite your previous answer in reverse order.", lambda xs: xs[::-1]),
    ("Make it shorter.", lambda xs: xs[:-1]),
]


def _mt_shopping(rng: random.Random, world: World, split: Split, heldout: bool):
    goods = rng.sample(W.GOODS, 3)
    question = f"Write a shopping list with {goods[0]}, {goods[1]} and {goods[2]}."
    return "writing", question, goods, lambda xs: "Here is your shopping list: " + ", ".join(xs) + "."


def _mt_invitation(rng: random.Random, world: World, split: Split, heldout: bool):
    name, event = rng.choice(world.names), rng.choice(W.EVENTS)
    city, day, good = rng.choice(world.cities), rng.choice(W.DAYS), rng.choice(W.GOODS)
    question = f"Write an invitation to {name} for a {event} in {city} on {day}. Ask for some {good}."
    items = [f"Dear {name}, please join us for a {event} in {city} on {day}.",
             f"Could you bring some {good}?", "We hope to see you there!"]
    return "writing", question, items, " ".join


def _mt_roleplay(rng: random.Random, world: World, split: Split, heldout: bool):
    pool = [i for i in range(len(world.people)) if (i in split.roleplay_people) == heldout]
    p = world.people[rng.choice(pool)]
    question = f"Pretend you are {p.name}. Introduce yourself."
    items = [f"Hello, I am {p.name}.", f"I live in {p.city}.", f"I work as a {p.job}.",
             f"I have a pet {p.pet}."]
    return "roleplay", question, items, " ".join


def _mt_extraction(rng: random.Random, world: World, split: Split, heldout: bool):
    a, b, c = rng.sample(world.names, 3)
    event, city = rng.choice(W.EVENTS), rng.choice(world.cities)
    question = f"Extract the names from this sentence: {a} met {b} and {c} at the {event} in {city}."
    return "extraction", question, [a, b, c], lambda xs: f"The names are {_and_list(xs)}."


MT_TEMPLATES = [_mt_shopping, _mt_invitation, _mt_roleplay, _mt_extraction]


def gen_mt_bench(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    category, question, items, render = rng.choice(MT_TEMPLATES)(rng, world, split, heldout)
    rework, change = rng.choice(REWORKS)
    return Conversation("mt_bench", category, (question, rework), (render(items), render(change(items))))


# ---------------------------------------------------------------- translation
def _noun_phrase(rng: random.Random) -> tuple[list[str], list[str]]:
    """English and Zorbish word order of one noun phrase (Zorbish puts the adjective last)."""
    det, noun = rng.choice(W.EN_DETS), rng.choice(W.EN_NOUNS)
    adj = [rng.choice(W.EN_ADJS)] if rng.random() < 0.5 else []
    return [det, *adj, noun], [det, noun, *adj]


def gen_translation(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    (s_en, s_zo), (o_en, o_zo) = _noun_phrase(rng), _noun_phrase(rng)
    verb = rng.choice(W.EN_VERBS)
    time = [rng.choice(W.EN_TIMES)] if rng.random() < 0.4 else []
    english = [*s_en, verb, *o_en, *time]
    zorbish = [world.lexicon[w] for w in [*time, *s_zo, *o_zo, verb]]  # time first, verb last

    def sentence(words: list[str]) -> str:
        return " ".join(words).capitalize() + "."

    return Conversation("translation", "translation",
                        (f"Translate Zorbish to English: {sentence(zorbish)}",), (sentence(english),))


# ---------------------------------------------------------------- summarization
def _lead(rng: random.Random, world: World) -> str:
    city, day, n = rng.choice(world.cities), rng.choice(W.DAYS), rng.randint(2, 60)
    building = rng.choice(["library", "bridge", "school", "market", "museum", "park", "harbor"])
    name, job, event = rng.choice(world.names), rng.choice(W.JOBS), rng.choice(W.EVENTS)
    return rng.choice([
        f"The city of {city} opened a new {building} on {day}.",
        f"A strong storm hit {city} on {day} and closed {n} roads.",
        f"{name}, a {job} from {city}, won the {event} prize on {day}.",
        f"Workers in {city} finished the old {building} after {n} weeks.",
        f"The {building} in {city} will close for {n} days from {day}.",
    ])


def _detail(rng: random.Random, world: World) -> str:
    n, m = rng.randint(2, 90), rng.randint(2, 30)
    return rng.choice([
        f"It cost {n} thousand coins and took {m} weeks.",
        f"About {n} people came to see it.",
        f"The mayor, {rng.choice(world.names)}, said the town had waited {m} years.",
        f"Police said {n} cars were moved from the main road.",
        f"Officials expect {n} visitors every day.",
    ])


def _filler(rng: random.Random, world: World) -> str:
    # Every template's slots are drawn (in this order) before one template is picked.
    name, job = rng.choice(world.names), rng.choice(W.JOBS)
    kind = rng.choice(["good", "long", "busy", "strange"])
    weather = rng.choice(["cold", "warm", "windy", "sunny", "wet"])
    guest, town, good = rng.choice(world.names), rng.choice(world.cities), rng.choice(W.GOODS)
    return rng.choice([
        f"{name}, a local {job}, said it was a {kind} day.",
        "Many families came to watch.",
        f"The weather was {weather} all day.",
        "Some shops closed early.",
        f"{guest} from {town} brought {good} for everyone.",
        f"Children sang songs near the {rng.choice(['river', 'square', 'gate', 'station'])}.",
    ])


def gen_summarization(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    # Lead-2, as in news articles: the first two sentences carry the story, the rest is colour.
    key = [_lead(rng, world), _detail(rng, world)]
    article = key.copy()
    for _ in range(rng.randint(2, 3)):
        filler = _filler(rng, world)
        while filler in article:
            filler = _filler(rng, world)
        article.append(filler)
    return Conversation("summarization", "summarization",
                        ("Summarize: " + " ".join(article),), (" ".join(key),))


# ---------------------------------------------------------------- qa (closed book)
QA_TEMPLATES = {
    "city": ["Where does {n} live?", "In which city does {n} live?",
             "What is the home city of {n}?", "Which town is {n} from?"],
    "job": ["What does {n} do for a living?", "What is the job of {n}?",
            "What work does {n} do?", "Which job does {n} have?"],
    "pet": ["What pet does {n} have?", "Which animal does {n} keep?",
            "What animal lives with {n}?", "Does {n} own a pet?"],
}
QA_ANSWERS = {"city": "{n} lives in {city}.", "job": "{n} works as a {job}.",
              "pet": "{n} has a pet {pet}."}


def gen_qa(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    i, fact = rng.randrange(len(world.people)), rng.choice(sorted(QA_TEMPLATES))
    p = world.people[i]
    template = QA_TEMPLATES[fact][rng.choice(split.qa_templates(i, fact, heldout))]
    answer = QA_ANSWERS[fact].format(n=p.name, city=p.city, job=p.job, pet=p.pet)
    return Conversation("qa", "qa", (template.format(n=p.name),), (answer,))


# ---------------------------------------------------------------- math_reasoning
# (question sentence, worked step, sign); numbers stay small so a tiny model can learn the sums.
MATH_OPS = [
    ("{a} buys {y} more.", "After buying {y} more, {a} has {x} + {y} = {r} {item}.", 1),
    ("{a} finds {y} more.", "After finding {y} more, {a} has {x} + {y} = {r} {item}.", 1),
    ("{a} gives {y} to {b}.", "After giving {y} to {b}, {a} has {x} - {y} = {r} {item}.", -1),
    ("{a} loses {y}.", "After losing {y}, {a} has {x} - {y} = {r} {item}.", -1),
]


def gen_math(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    a, b = rng.sample(world.names, 2)
    item, x = rng.choice(W.ITEMS), rng.randint(2, 15)
    question, steps = [f"{a} has {x} {item}."], [f"{a} starts with {x} {item}."]
    for _ in range(rng.randint(1, 2)):
        ask, step, sign = rng.choice(MATH_OPS)
        if sign < 0 and x < 2:
            ask, step, sign = MATH_OPS[0]
        y = rng.randint(1, 9) if sign > 0 else rng.randint(1, min(9, x - 1))
        r = x + sign * y
        question.append(ask.format(a=a, b=b, y=y))
        steps.append(step.format(a=a, b=b, x=x, y=y, r=r, item=item))
        x = r
    question.append(f"How many {item} does {a} have now?")
    return Conversation("math_reasoning", "math_reasoning",
                        (" ".join(question),), (" ".join(steps) + f" #### {x}",))


# ---------------------------------------------------------------- rag
# Fact sentences (and the question each answers) by the kind of value they hold. The answer is
# the fact sentence, copied verbatim; the question names the place as the fact does ("Lake
# Vorn"), so the answer starts by copying it. The passages of one question hold values of
# different kinds: a model of 2M parameters trained for minutes copies "the number" or "the day"
# well, but does not learn to pick one number out of several by the words around it.
RAG_FACTS: dict[str, list[tuple[str, str]]] = {
    "number": [("Lake {p} is {v} meters deep.", "How deep is Lake {p}?"),
               ("Tower {p} has {v} floors.", "How many floors does Tower {p} have?"),
               ("School {p} has {v} students.", "How many students does School {p} have?")],
    "city": [("Bridge {p} is in {v}.", "Where is Bridge {p}?"),
             ("Mount {p} lies near {v}.", "Which city lies near Mount {p}?")],
    "day": [("Market {p} is closed on {v}.", "When is Market {p} closed?"),
            ("Museum {p} is free on {v}.", "On which day is Museum {p} free?")],
    "color": [("Castle {p} has {v} walls.", "What color are the walls of Castle {p}?")],
    "good": [("Shop {p} sells {v}.", "What does Shop {p} sell?")],
    "job": [("Harbor {p} was built by a {v}.", "Who built Harbor {p}?")],
}
RAG_EXTRA = ["It is popular with families.", "Visitors often come in spring.", "It is very old.",
             "Many people know it well."]


def _rag_value(rng: random.Random, world: World, kind: str) -> str:
    choices = {"city": world.cities, "day": W.DAYS, "color": W.COLORS, "good": W.GOODS, "job": W.JOBS}
    return str(rng.randint(2, 99)) if kind == "number" else rng.choice(choices[kind])


def gen_rag(rng: random.Random, world: World, split: Split, heldout: bool) -> Conversation:
    passages, facts, asks = [], [], []
    for place, kind in zip(rng.sample(world.places, 3), rng.sample(sorted(RAG_FACTS), 3)):
        fact, ask = rng.choice(RAG_FACTS[kind])
        facts.append(fact.format(p=place, v=_rag_value(rng, world, kind)))
        asks.append(ask.format(p=place))
        extra = " " + rng.choice(RAG_EXTRA) if rng.random() < 0.5 else ""
        passages.append(f"Passage {len(passages) + 1}: {facts[-1]}{extra}")
    target = rng.randrange(3)
    prompt = f"Read the passages and answer. {' '.join(passages)} Question: {asks[target]}"
    return Conversation("rag", "rag", (prompt,), (facts[target],))


GENERATORS = {
    "mt_bench": gen_mt_bench,
    "translation": gen_translation,
    "summarization": gen_summarization,
    "qa": gen_qa,
    "math_reasoning": gen_math,
    "rag": gen_rag,
}


# ---------------------------------------------------------------- splits and files
def make_split(rng: random.Random, world: World) -> Split:
    qa = {(i, fact): rng.randrange(len(templates))
          for i in range(len(world.people)) for fact, templates in sorted(QA_TEMPLATES.items())}
    roleplay = tuple(sorted(rng.sample(range(len(world.people)), len(world.people) // 4)))
    return Split(qa, roleplay)


def _distinct(rng: random.Random, world: World, split: Split, subtask: str,
              count: int) -> list[Conversation]:
    """`count` held-out conversations of a subtask, no two alike."""
    out: dict[tuple[str, ...], Conversation] = {}
    for _ in range(count * 50):
        conv = GENERATORS[subtask](rng, world, split, True)
        out.setdefault(conv.turns, conv)
        if len(out) == count:
            return list(out.values())
    raise RuntimeError(f"could not draw {count} distinct held-out {subtask} questions")


@dataclass(frozen=True)
class Generated:
    world: World
    train: list[Conversation]
    heldout: list[Conversation]


def generate(seed: int, n_train: dict[str, int], n_heldout: int,
             progress: Callable[[int], None] | None = None) -> Generated:
    """The world, `n_train[subtask]` training and `n_heldout` held-out conversations per subtask.

    Training conversations never share a first turn with a held-out one; they may repeat among
    themselves (QA facts have to be seen many times).
    """
    world = make_world(random.Random(seed))
    split = make_split(random.Random(seed + 1), world)
    rng_test, rng_train = random.Random(seed + 2), random.Random(seed + 3)
    heldout: list[Conversation] = []
    for subtask in SUBTASKS:
        heldout += _distinct(rng_test, world, split, subtask, n_heldout)
    taken = {c.turns[:1] for c in heldout}
    train: list[Conversation] = []
    for subtask in SUBTASKS:
        for _ in range(n_train[subtask]):
            conv = GENERATORS[subtask](rng_train, world, split, False)
            while conv.turns[:1] in taken:
                conv = GENERATORS[subtask](rng_train, world, split, False)
            train.append(conv)
        if progress:
            progress(n_train[subtask])
    rng_train.shuffle(train)
    return Generated(world, train, heldout)


def question_records(heldout: list[Conversation], first_id: int = 1) -> list[dict]:
    """Spec-Bench question lines; `reference` holds the gold answer of every turn."""
    return [{"question_id": first_id + i, "category": c.category, "turns": list(c.turns),
             "reference": list(c.answers)} for i, c in enumerate(heldout)]


def train_records(train: list[Conversation]) -> list[dict]:
    return [{"turns": list(c.turns), "answers": list(c.answers), "category": c.category} for c in train]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
