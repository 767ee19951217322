"""The invented world the built-in tasks talk about: people with fixed facts, places, a toy language.

Everything here is drawn from one seeded `random.Random`, so a seed fixes the world. Invented
words keep the model from leaning on anything but what the training split teaches it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Syllables for invented words; consonant-vowel pairs keep them pronounceable and short.
_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()

JOBS = ["baker", "teacher", "farmer", "painter", "doctor", "sailor", "tailor", "miner", "potter",
        "singer", "builder", "hunter"]
PETS = ["cat", "dog", "parrot", "rabbit", "goat", "horse", "turtle", "hamster", "duck", "pig"]
ITEMS = ["apples", "pens", "coins", "stickers", "books", "cards", "shells", "marbles", "eggs",
         "cups"]
GOODS = ["bread", "milk", "cheese", "rice", "soap", "tea", "honey", "salt", "butter", "beans",
         "plums", "nuts"]
EVENTS = ["picnic", "party", "dinner", "concert", "wedding", "festival", "game", "dance"]
COLORS = ["red", "blue", "green", "white", "yellow", "black", "grey", "pink"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# The toy language pair: English words and their grammatical roles. Zorbish puts the time word
# first, adjectives after nouns and the verb last, so a translation must reorder, not copy.
EN_DETS = ["the", "a"]
EN_NOUNS = ["dog", "cat", "farmer", "bird", "child", "horse", "teacher", "fish", "king", "boat",
            "tree", "house"]
EN_ADJS = ["big", "small", "red", "old", "happy", "quiet", "green", "young"]
EN_VERBS = ["saw", "found", "liked", "followed", "painted", "carried", "heard", "helped"]
EN_TIMES = ["yesterday", "today", "again"]


@dataclass(frozen=True)
class Person:
    name: str
    city: str
    job: str
    pet: str


@dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    cities: tuple[str, ...]
    places: tuple[str, ...]  # names of the lakes, bridges, markets... of RAG passages
    names: tuple[str, ...]  # first names for stories, lists and word problems
    lexicon: dict[str, str]  # English word -> Zorbish word


def _word(rng: random.Random, syllables: int, used: set[str]) -> str:
    """A fresh invented word of `syllables` syllables, never one already in `used`."""
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.5:
            word += rng.choice(_ONSETS)
        if word not in used:
            used.add(word)
            return word


def _names(rng: random.Random, count: int, syllables: int, used: set[str]) -> list[str]:
    return [_word(rng, syllables, used).capitalize() for _ in range(count)]


def make_world(rng: random.Random, n_people: int = 24, n_cities: int = 12, n_places: int = 40,
               n_names: int = 50) -> World:
    used: set[str] = set()
    first = _names(rng, n_people, 2, used)
    last = _names(rng, n_people, 2, used)
    cities = _names(rng, n_cities, 2, used)
    people = tuple(
        Person(f"{f} {l}", rng.choice(cities), rng.choice(JOBS), rng.choice(PETS))
        for f, l in zip(first, last)
    )
    english = EN_DETS + EN_NOUNS + EN_ADJS + EN_VERBS + EN_TIMES
    lexicon = {w: _word(rng, 1 if w in EN_DETS else 2, used) for w in english}
    return World(
        people=people,
        cities=tuple(cities),
        places=tuple(_names(rng, n_places, 2, used)),
        names=tuple(_names(rng, n_names, 2, used)),
        lexicon=lexicon,
    )
