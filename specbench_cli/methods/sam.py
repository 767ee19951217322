"""SAM-Decoding (Hu et al., 2024, arXiv:2411.10666): retrieval drafts through a suffix automaton.
The automaton of the prompt and the output so far grows by one state per token, and the
longest suffix of the text that occurred before is tracked along with it in amortised O(1) a
token (where PLD searches n-grams afresh each step). The draft copies what followed that
suffix's first occurrence; its length is the match's confidence: at least `min_match` tokens
draft, shorter matches fall back to the auxiliary drafter: Token Recycling's tree (the paper's
SAMD[Token Recycling]), an EAGLE-2 head's dynamic tree (SAMD[EAGLE2], the combination on
Spec-Bench's leaderboard), or none (a plain step). An optional static corpus (a REST datastore) is searched for the
longest match too and wins when longer by more than `static_bias` tokens, as upstream's
static automaton does; its suffix array answers the same longest-match query.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..drafters.datastore import SEPARATOR, Datastore
from ..engine import Engine
from ..errors import SpecbenchError
from .base import GREEDY, Budget, Decoding, Generation, Method, Option, Statistic
from .eagle import Eagle
from .matrix_tree import MAX_TOP_K, RecyclingTree, recycle, template_choices
from .verify import DecodeState, Tree, verify_chain, verify_tree


class SuffixAutomaton:
    """The suffix automaton of a growing token sequence (Blumer et al., 1985): state 0 is the
    empty string, every state a class of substrings sharing their end positions, with its
    longest length, suffix link and the end of its first occurrence (`first_end`: the text
    position just past it, so `text[first_end:]` is what followed)."""

    def __init__(self):
        self.next: list[dict[int, int]] = [{}]
        self.link, self.length, self.first_end = [-1], [0], [0]
        self.last = 0
        self.text: list[int] = []

    def new_state(self, length: int, first_end: int, link: int, moves: dict) -> int:
        self.next.append(moves)
        self.link.append(link)
        self.length.append(length)
        self.first_end.append(first_end)
        return len(self.next) - 1

    def extend(self, token: int):
        """Append one token (the textbook online construction)."""
        self.text.append(token)
        cur = self.new_state(self.length[self.last] + 1, len(self.text), 0, {})
        p = self.last
        while p != -1 and token not in self.next[p]:
            self.next[p][token] = cur
            p = self.link[p]
        if p != -1:
            q = self.next[p][token]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = self.new_state(self.length[p] + 1, self.first_end[q], self.link[q],
                                       dict(self.next[q]))
                while p != -1 and self.next[p].get(token) == q:
                    self.next[p][token] = clone
                    p = self.link[p]
                self.link[q] = self.link[cur] = clone
        self.last = cur

    def step(self, state: int, length: int, token: int) -> tuple[int, int]:
        """The longest match (state, length) after `token`, from the match before it: shorten
        along suffix links until the token can follow."""
        while state and token not in self.next[state]:
            state = self.link[state]
            length = self.length[state]
        if token in self.next[state]:
            return self.next[state][token], length + 1
        return 0, 0


class Tracker:
    """An automaton over the generation's text and the longest suffix of that text that occurred
    earlier in it: each token is matched against the text before it, then added."""

    def __init__(self):
        self.sam = SuffixAutomaton()
        self.state = self.length = 0

    def add(self, tokens: list[int]):
        for t in tokens:
            self.state, self.length = self.sam.step(self.state, self.length, t)
            self.sam.extend(t)

    def draft(self, num_draft: int) -> tuple[list[int], int]:
        """What followed the match's first occurrence, and the match's length. When that
        occurrence is too close to the end for `num_draft` tokens, a shorter match (suffix link)
        with an earlier first occurrence is taken, as upstream does."""
        sam, state, length, end = self.sam, self.state, self.length, len(self.sam.text)
        while sam.link[state] > 0 and end - sam.first_end[state] < num_draft:
            state = sam.link[state]
            length = sam.length[state]
        start = sam.first_end[state]
        return sam.text[start:start + num_draft], length


class SAMDecoding(Method):
    name = "sam"
    description = ("SAM-Decoding: drafts copied after the longest earlier match, tracked by a "
                   "suffix automaton; short matches fall back to Token Recycling")
    # Upstream defaults: n_predicts 10, len_threshold 4, len_bias 4; Token Recycling's tree
    # as the auxiliary drafter in its default configuration.
    options = {
        "num_draft": Option(10, int, "tokens copied per retrieval draft", low=1),
        "min_match": Option(4, int, "shortest match (tokens) that drafts by retrieval", low=1),
        "auxiliary": Option("recycling", str, "drafter below min_match: recycling (Token "
                            "Recycling's matrix and tree), eagle (an EAGLE-2 head's dynamic "
                            "tree: SAMD[EAGLE2]) or none (a plain step)"),
        "aux_draft": Option(80, int, "the auxiliary tree's tokens besides the root", low=1),
        "head": Option(None, str, "auxiliary=eagle: the EAGLE head (folder or hub id, as "
                       "eagle.head)"),
        "aux_depth": Option(5, int, "auxiliary=eagle: head passes per step", low=1),
        "aux_top_k": Option(10, int, "auxiliary=eagle: nodes expanded per depth", low=1),
        "datastore": Option(None, str, "a REST datastore searched as a static corpus (none: "
                            "the generation's own text only)"),
        "static_bias": Option(4, int, "tokens a static match must exceed the dynamic one by",
                              low=0),
        "max_span": Option(16, int, "longest suffix looked up in the datastore", low=2)}
    # Both drafters verify at most the budget: the copied chain and the auxiliary tree (an
    # EAGLE tree's depth and width follow its size, as in eagle.py).
    budget = Budget("num_draft, aux_draft", "num_draft = aux_draft = budget − 1",
                    lambda n, o: {"num_draft": n - 1, "aux_draft": n - 1,
                                  "aux_depth": min(o["aux_depth"], n - 1),
                                  "aux_top_k": min(o["aux_top_k"], n - 1)},
                    lambda o: max(o["num_draft"], 0 if o["auxiliary"] == "none"
                                  else o["aux_draft"]) + 1)
    statistics = (
        Statistic("retrieved", "retrieved", "rounds", 100, "%",
                  "share of steps drafted by retrieval (match ≥ min_match)"),
        Statistic("match", "matched", "retrieved", 1, "",
                  "mean match length of the retrieval drafts"),)
    # Token Recycling's built-in tree size (recycling.py). A sweep of num_draft 4/6/10 ×
    # min_match 2/4 on the built-in model came out level in speed (0.80-0.90x, noise ±0.1);
    # min_match 2 drafts by retrieval twice as often and reached the highest MAT.
    # With auxiliary=eagle: the built-in EAGLE head and EAGLE's built-in tree shape.
    builtin_options = {"aux_draft": 8, "min_match": 2, "head": "{addon:eagle}",
                       "aux_depth": 7, "aux_top_k": 2}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        o = self.options
        if o["auxiliary"] not in ("recycling", "eagle", "none"):
            raise SpecbenchError(f"sam: auxiliary must be recycling, eagle or none, got "
                                 f"{o['auxiliary']!r}")
        self.store = None
        if o["datastore"] is not None:
            self.store = o["datastore"] if isinstance(o["datastore"], Datastore) \
                else Datastore(Path(o["datastore"]), tokenizer)
        if o["auxiliary"] == "recycling":
            self.tree = RecyclingTree(template_choices(o["aux_draft"], MAX_TOP_K))
            self.matrix = None      # made on first use (the engine's vocabulary), then kept
        if o["auxiliary"] == "eagle":
            self.require("head", "an EAGLE head with auxiliary=eagle: --opt sam.head=PATH "
                                 "(train one with `specbench train eagle`)")
            self.eagle = RetrievalFirst(self, engine, eos_ids, tokenizer, head=o["head"],
                                        total_tokens=o["aux_draft"] + 1, depth=o["aux_depth"],
                                        top_k=o["aux_top_k"])

    def parts(self) -> list[Method]:
        return [self.eagle] if self.options["auxiliary"] == "eagle" else []

    def reset(self):
        """Token Recycling's matrix forgets; the automaton is each generation's own anyway."""
        if self.options["auxiliary"] == "recycling":
            self.matrix = None

    def parameter_overhead(self) -> dict:
        store = {"bytes": self.store.bytes, "tokens": self.store.n} if self.store else {}
        matrix = self.matrix.nbytes if self.options["auxiliary"] == "recycling" and \
            self.matrix is not None else 0
        head = self.eagle.parameter_overhead() if self.options["auxiliary"] == "eagle" else \
            {"params": 0, "bytes": 0}
        return {"params": head["params"], "bytes": head["bytes"] + matrix + store.get("bytes", 0)}

    def retrieve(self, tracker: Tracker, context: list[int]) -> tuple[list[int], int]:
        """The retrieval draft and its match length: the dynamic automaton's, or the static
        corpus's when longer by more than static_bias."""
        o = self.options
        draft, length = tracker.draft(o["num_draft"])
        if self.store is not None:
            found = self.store.longest_match(context, o["max_span"])
            if found is not None and found[0] - o["static_bias"] > length:
                span, lo, hi = found
                copied = self.store.continuations(lo, hi, 1, o["num_draft"])[0].tolist()
                if SEPARATOR in copied:                 # a turn's end is not a draft
                    copied = copied[:copied.index(SEPARATOR)]
                draft, length = copied, span - o["static_bias"]
        return draft, length

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        o = self.options
        if o["auxiliary"] == "eagle":
            self.eagle.eos_ids = self.eos_ids
            return self.eagle.generate(prompt_ids, max_new_tokens, decoding)
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        aux = o["auxiliary"] == "recycling"
        if aux and self.matrix is None:
            self.matrix = np.zeros((self.engine.config.vocab_size, MAX_TOP_K), dtype=np.int32)
        stats = {"rounds": 0, "retrieved": 0, "matched": 0, "drafted": 0}
        tracker, seen, kept = Tracker(), 0, {}

        def forward(ids, offset, positions=None, block_mask=None):  # keeps the block's logits
            logits, hidden = self.engine(ids, state.cache, offset, positions=positions,
                                         block_mask=block_mask, return_hidden=True)
            kept["ids"], kept["logits"] = ids[0].tolist(), logits[0]
            return (logits, hidden) if block_mask is not None else logits

        while not state.done:
            with state.phase("draft"):
                tracker.add(state.tokens[seen:])
                seen = len(state.tokens)
                draft, length = self.retrieve(tracker, state.tokens)
            stats["rounds"] += 1
            if length >= o["min_match"] and draft:
                stats["retrieved"] += 1
                stats["matched"] += length
                stats["drafted"] += len(draft)
                verify_chain(state, draft, forward if aux else None)
            elif aux:
                with state.phase("draft"):
                    tokens = self.tree.draft(self.matrix, state.pending)
                stats["drafted"] += len(tokens) - 1
                verify_tree(state, self.tree.tree, tokens, forward)
            else:
                verify_chain(state, [])
                continue
            if aux:     # every verified token's row learns the target's top-k after it
                with state.phase("draft"):
                    recycle(self.matrix, kept["ids"], kept["logits"])
        return state.result(**stats)


class RetrievalFirst(Eagle):
    """SAMD[EAGLE2]: EAGLE-2 whose every step first asks SAM for a retrieval draft. A match of
    at least min_match tokens is verified as a chain (a tree with one path), and the head
    catches up on the target's features at what was accepted, as after its own trees, so it
    is ready whenever retrieval falls short again."""
    name = "sam"

    def __init__(self, sam: SAMDecoding, engine: Engine, eos_ids: set[int], tokenizer=None,
                 **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        self.sam = sam
        # The generation in progress (a batch decodes several, each in its own context).
        self.current = ContextVar("samd_generation")

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        now = SimpleNamespace(tracker=Tracker(), seen=0, counts={"retrieved": 0, "matched": 0})
        self.current.set(now)
        generation = super().generate(prompt_ids, max_new_tokens, decoding)
        generation.stats.update(now.counts)
        return generation

    def draft(self, state: DecodeState, out, committed: int, cache):
        now = self.current.get()
        now.tracker.add(state.tokens[now.seen:])
        now.seen = len(state.tokens)
        draft, length = self.sam.retrieve(now.tracker, state.tokens)
        if length < self.sam.options["min_match"] or not draft:
            return super().draft(state, out, committed, cache)
        now.counts["retrieved"] += 1
        now.counts["matched"] += length
        return Tree(list(range(-1, len(draft)))), [0] + draft, 0
