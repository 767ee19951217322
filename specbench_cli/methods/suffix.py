"""SuffixDecoding (Oliaro et al., 2024, arXiv:2411.04975; Snowflake's ArcticInference, adopted
by vLLM and SGLang): model-free drafts from suffix trees. A tree over the current prompt and
its output so far, and a global tree over earlier outputs (kept across generations, like Token
Recycling's matrix), count how often each continuation followed each pattern. Every step the
newest tokens are matched in both; below a match of p tokens the most frequent continuations
(estimated probability = the product of count ratios along the path) are grown best first
into a draft tree of at most factor·p + offset nodes (the paper's MAX_SPEC = α·p: longer
matches, more daring speculation), and the tree with the higher expected acceptance is verified.

Here a suffix tree is a trie of every substring of up to `tree_depth` tokens (the depth bounds
match plus speculation, as upstream's max_tree_depth does), its nodes counting occurrences.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from ..engine import Engine
from .base import GREEDY, Decoding, Generation, Method, Option, Statistic, draft_budget
from .verify import Tree, verify_chain, verify_tree


class Node:
    __slots__ = ("count", "children")

    def __init__(self):
        self.count = 0
        self.children: dict[int, Node] = {}


class SuffixTrie:
    """Every substring of at most `depth` tokens of the sequences added, with its number of
    occurrences. `add` inserts a whole sequence (sign -1 removes one added before);
    `start`/`append` grow the newest sequence a token at a time in O(depth)."""

    def __init__(self, depth: int):
        self.depth = depth
        self.root = Node()
        self.open: list[tuple[Node, int]] = []     # (node, its depth) of the newest suffixes

    def add(self, tokens: list[int], sign: int = 1):
        for i in range(len(tokens)):
            node = self.root
            for t in tokens[i:i + self.depth]:
                child = node.children.get(t)
                if child is None:
                    child = node.children[t] = Node()
                child.count += sign
                if child.count == 0:              # removed: drop the now-empty branch
                    del node.children[t]
                    break
                node = child

    def start(self, tokens: list[int]):
        """Begin a sequence that `append` extends: its own substrings go in as they arrive."""
        self.open = []
        for t in tokens:
            self.append(t)

    def append(self, token: int):
        grown = []
        for node, d in self.open + [(self.root, 0)]:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = Node()
            child.count += 1
            if d + 1 < self.depth:
                grown.append((child, d + 1))
        self.open = grown

    def matches(self, context: list[int]):
        """(p, node) for every p whose last p tokens of `context` are a path of the trie,
        shortest first (a substring of a stored sequence has all its suffixes stored too, so
        the first miss ends the search)."""
        for p in range(1, min(self.depth, len(context) + 1)):
            node = self.root
            for t in context[-p:]:
                node = node.children.get(t)
                if node is None:
                    return
            yield p, node


def speculate(node: Node, budget: int, min_prob: float) -> tuple[list[int], list[int], float]:
    """The `budget` continuations below `node` of highest estimated probability (each at least
    `min_prob`), best first, as a draft tree: (parents, tokens, expected accepted tokens = the
    sum of their probabilities). A child's probability is its parent's times its share of the
    parent's continuations; a parent is never less likely than its child, so parents come
    first."""
    parents, tokens, score = [-1], [0], 0.0
    order = itertools.count()            # ties: the earlier-seen continuation first
    heap: list = []

    def push_children(trie_node: Node, index: int, prob: float):
        total = sum(c.count for c in trie_node.children.values())
        for token, child in trie_node.children.items():
            p = prob * child.count / total
            if p >= min_prob:
                heapq.heappush(heap, (-p, next(order), token, child, index))

    push_children(node, 0, 1.0)
    while heap and len(tokens) <= budget:
        neg_p, _, token, child, parent = heapq.heappop(heap)
        parents.append(parent)
        tokens.append(token)
        score -= neg_p
        push_children(child, len(tokens) - 1, -neg_p)
    return parents, tokens, score


def best_draft(tries: list[SuffixTrie], context: list[int], max_spec: int, factor: float,
               offset: float, min_prob: float):
    """The draft tree of highest expected acceptance over the tries and match lengths (p, with
    a budget of min(max_spec, factor·p + offset) nodes), its p and which trie it came from;
    (None, 0, -1) when nothing is drafted. Of consecutive match lengths with the same count
    (the same occurrences) only the longest, whose budget is largest, is grown."""
    best, best_p, source = None, 0, -1
    for which, trie in enumerate(tries):
        found = list(trie.matches(context))
        for i, (p, node) in enumerate(found):
            if i + 1 < len(found) and found[i + 1][1].count == node.count:
                continue
            budget = min(max_spec, int(factor * p + offset))
            if budget < 1 or not node.children:
                continue
            draft = speculate(node, budget, min_prob)
            if len(draft[1]) > 1 and (best is None or draft[2] > best[2]):
                best, best_p, source = draft, p, which
    return best, best_p, source


class SuffixDecoding(Method):
    name = "suffix"
    description = ("SuffixDecoding: frequency-ranked draft trees from suffix trees over the prompt "
                   "and earlier outputs, sized by the match length")
    # Upstream defaults (ArcticInference / vLLM): max_tree_depth 24, max_spec_factor 1.0,
    # min_token_prob 0.1, max_cached_requests 10000.
    options = {
        "max_spec": Option(32, int, "most draft-tree tokens a step", low=1),
        "tree_depth": Option(24, int, "deepest pattern + continuation the trees hold", low=2),
        "spec_factor": Option(1.0, float, "draft tokens per matched token (MAX_SPEC = "
                              "factor × match + offset)", low=0.0),
        "spec_offset": Option(0.0, float, "draft tokens added to factor × match"),
        "min_prob": Option(0.1, float, "least estimated probability of a drafted token (product "
                           "of frequency ratios along its path)", low=0.0, high=1.0),
        "max_cached": Option(10000, int, "earlier outputs kept in the global tree, oldest "
                             "dropped first (0: no global tree, the prompt's only)", low=0)}
    budget = draft_budget("max_spec")
    statistics = (
        Statistic("match", "matched", "rounds", 1, "",
                  "mean length of the pattern a step's draft was grown from (0: no draft)"),
        Statistic("global", "from_global", "rounds", 100, "%",
                  "share of steps drafted from the global tree of earlier outputs"),)

    # The built-in model's blocks cost ~1.3 one-token steps at 3 tokens and ~2.1 at 10
    # (`run --breakdown`): a sweep of max_spec 6/12/32 × spec_factor 1/2 came out level in
    # speed (0.86-0.90x, noise ±0.1); 12 × 2 reached the highest MAT.
    builtin_options = {"max_spec": 12, "spec_factor": 2.0}

    def __init__(self, engine: Engine, eos_ids: set[int], tokenizer=None, **options):
        super().__init__(engine, eos_ids, tokenizer, **options)
        self.reset()

    def reset(self):
        self.global_trie = SuffixTrie(self.options["tree_depth"])
        self.cached: deque[list[int]] = deque()

    def remember(self, output: list[int]):
        """Add an output to the global tree, dropping the oldest beyond max_cached."""
        if self.options["max_cached"] == 0:
            return
        self.global_trie.add(output)
        self.cached.append(output)
        while len(self.cached) > self.options["max_cached"]:
            self.global_trie.add(self.cached.popleft(), sign=-1)

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 decoding: Decoding = GREEDY) -> Generation:
        o = self.options
        state = self.new_state(prompt_ids, max_new_tokens, decoding)
        stats = {"rounds": 0, "matched": 0, "from_global": 0, "drafted": 0}
        with state.phase("draft"):
            local = SuffixTrie(o["tree_depth"])
            local.start(state.tokens)
        seen = len(state.tokens)
        while not state.done:
            with state.phase("draft"):
                for token in state.tokens[seen:]:
                    local.append(token)
                seen = len(state.tokens)
                # The newest pattern always matches itself at the end of the local tree, with
                # nothing after it: `speculate` counts only occurrences that continue.
                draft, p, source = best_draft([local, self.global_trie], state.tokens, o["max_spec"],
                                      o["spec_factor"], o["spec_offset"], o["min_prob"])
            stats["rounds"] += 1
            if draft is None:
                verify_chain(state, [])              # nothing matched: a plain step
                continue
            parents, tokens, _ = draft
            stats["matched"] += p
            stats["from_global"] += source == 1
            stats["drafted"] += len(tokens) - 1
            verify_tree(state, Tree(parents), tokens)
        with state.phase("draft"):
            self.remember(state.new_tokens)
        return state.result(**stats)
