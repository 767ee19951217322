"""Verification shared by every method: decoding state, EOS/length trimming, chains and trees,
greedy or sampled.

Invariant of `DecodeState`: the cache holds rows for every committed token but the last one
(`pending`), whose logits have not been computed yet. A verification step feeds `pending` plus
the drafts as one block, keeps the rows of what was accepted and commits the accepted drafts
plus the target's own next token (the bonus).

Sampling (a `Decoding` whose `sampling` is set, temperature > 0) keeps the target's processed
distribution p exactly (Leviathan et al.; SpecInfer for trees): a draft x drawn from a draft
distribution q is accepted with probability min(1, p(x)/q(x)); a draft chosen deterministically
(copied, retrieved, a top-k candidate) has a one-hot q, so it is accepted with probability p(x).
On rejection the next token comes from the residual norm(max(0, p − q)); a tree node's children
are tried in order, the residual updated after each rejection; after the last accepted node the
bonus token is drawn from p (or the residual).
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..engine import Engine, sync
from ..errors import SpecbenchError


@dataclass(frozen=True)
class Decoding:
    """How one generation decodes, an argument of `Method.generate` that the method hands to
    its DecodeState (`Method.new_state`): the sampling settings (verify.Sampling; None: greedy)
    and the phase timer of `run --breakdown` (verify.Phases; None: off)."""
    sampling: object = None
    phases: object = None


GREEDY = Decoding()


@dataclass
class Generation:
    tokens: list[int]                 # new tokens, through the first EOS when one was produced
    accept_lengths: list[int]         # tokens committed by each target forward (bonus included)
    stats: dict = field(default_factory=dict)   # method-specific counters (drafted tokens, ...)

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)


# Rows reserved past prompt + max_new_tokens for a block of drafts in flight (trees included).
DRAFT_HEADROOM = 128


class Phases:
    """Seconds spent in each phase of decoding (prefill, draft, verify), the device synchronized
    at every boundary. `specbench run --breakdown` sets one in `Decoding.phases`; it is off by
    default because the syncs perturb the headline timing (on a GPU they stall the queue)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - start


def no_phases(name: str):
    return nullcontext()


@dataclass(frozen=True)
class Sampling:
    """Sampling settings: p = softmax(logits / temperature), cut to the `top_k` most likely
    tokens (0: all) and to the smallest set whose mass reaches `top_p`, renormalised. Drafters
    that sample use the same processing for q."""
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed distributions (..., V) in fp32."""
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(-1) - sorted_p        # mass of the tokens ranked above
            sorted_p = sorted_p.masked_fill(before >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def generator(self, prompt_ids: list[int]) -> torch.Generator:
        """One generator per answer, seeded by the seed and the prompt: the same seed, method
        and prompt give the same tokens, whatever ran before."""
        key = zlib.crc32(np_ids(prompt_ids), self.seed & 0xFFFFFFFF)
        return torch.Generator().manual_seed(key)


def np_ids(ids: list[int]) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


def accepts(rng: torch.Generator, p_x: float, q_x: float = 1.0) -> bool:
    """The rejection rule: accept with probability min(1, p(x)/q(x))."""
    return float(torch.rand((), generator=rng)) * q_x < p_x


def draw(rng: torch.Generator, probs: torch.Tensor) -> int:
    return int(torch.multinomial(probs.cpu(), 1, generator=rng))


def residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """norm(max(0, p − q)) after draft x was rejected; a one-hot q (q None) zeroes x."""
    if q is None:
        out = p.clone()
        out[x] = 0.0
    else:
        out = (p - q).clamp_min(0.0)
    total = out.sum()
    return out / total if total > 0 else p


class DecodeState:
    def __init__(self, engine: Engine, prompt_ids: list[int], max_new_tokens: int,
                 eos_ids: set[int], decoding: Decoding, prefill: Callable | None = None):
        """Prefill the prompt and commit the first token. `decoding` has no default, so that no
        method can forget to pass on a sampling run's settings (methods make their states
        through Method.new_state). `prefill(ids_tensor, cache)` may replace the plain forward
        (methods that keep extra state from the prompt); it returns the logits and the final
        normed hidden states, kept as `hidden` (drafters that read the target's features start
        from them)."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        self.engine = engine
        # `with state.phase("draft"): ...` times a phase when a breakdown was asked for.
        self.phase = decoding.phases or no_phases
        # Sampling settings, or None for greedy decoding; `rng` draws every random choice.
        self.sampling: Sampling | None = decoding.sampling
        self.rng = self.sampling.generator(prompt_ids) if self.sampling else None
        self.block_sizes: list[int] = []       # tokens fed to each verification forward
        self.eos_ids = eos_ids
        self.max_new_tokens = max_new_tokens
        self.prompt_len = len(prompt_ids)
        self.tokens = list(prompt_ids)
        self.accept_lengths: list[int] = []
        self.done = False
        self.cache = engine.cache(self.prompt_len + max_new_tokens + DRAFT_HEADROOM)
        ids = torch.tensor([prompt_ids], device=engine.device)
        with self.phase("prefill"):
            if prefill:
                logits, self.hidden = prefill(ids, self.cache)
            else:
                logits, self.hidden = engine(ids, self.cache, 0, return_hidden=True)
            first = self.next_token(logits[0, -1])
        self.offset = self.prompt_len          # cache rows filled
        self.commit([first])

    def next_token(self, logits: torch.Tensor) -> int:
        """The target's own choice from one position's logits: argmax, or a sample from p."""
        if self.sampling is None:
            return int(logits.argmax())
        return draw(self.rng, self.sampling.probs(logits))

    def draft_token(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """A drafter's choice from its logits: greedy, its argmax (q None); sampling, a draw
        from its processed distribution q, returned for `verify_chain`."""
        if self.sampling is None:
            return int(logits.argmax()), None
        q = self.sampling.probs(logits)
        return draw(self.rng, q), q

    @property
    def pending(self) -> int:
        return self.tokens[-1]

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def room(self) -> int:
        """How many more tokens may be committed."""
        return self.max_new_tokens - (len(self.tokens) - self.prompt_len)

    def commit(self, tokens: list[int]):
        """Append one step's tokens, cut at the first EOS and at max_new_tokens."""
        kept = []
        for t in tokens[:self.room]:
            kept.append(t)
            if t in self.eos_ids:
                self.done = True
                break
        self.tokens.extend(kept)
        self.accept_lengths.append(len(kept))
        if self.room <= 0:
            self.done = True

    def result(self, **stats) -> Generation:
        return Generation(self.new_tokens, self.accept_lengths,
                          {**stats, "block_sizes": self.block_sizes})


def accepted_prefix(draft: list[int], predicted: list[int]) -> int:
    """Length of the leading run where each draft equals the target's greedy choice before it."""
    n = 0
    while n < len(draft) and draft[n] == predicted[n]:
        n += 1
    return n


def verify_chain(state: DecodeState, draft: list[int], forward: Callable | None = None,
                 q: list[torch.Tensor] | None = None) -> int:
    """Verify a chain of drafts in one target forward; commit and return how many were accepted.

    `forward(ids_tensor, offset)` → logits may replace the full-model forward (Kangaroo runs only
    the deep layers); it must write the block's rows at `offset` into `state.cache`. When
    sampling, `q[i]` is the distribution draft i was drawn from (None: drafts chosen
    deterministically).
    """
    engine = state.engine
    draft = draft[:max(state.room - 1, 0)]  # never verify what could not be committed
    ids = torch.tensor([[state.pending] + draft], device=engine.device)
    with state.phase("verify"):
        logits = forward(ids, state.offset) if forward else engine(ids, state.cache, state.offset)
        if state.sampling:
            n, bonus = sampled_chain(state, draft, state.sampling.probs(logits[0]), q)
        else:
            predicted = logits[0].argmax(-1).tolist()
            n = accepted_prefix(draft, predicted)
            bonus = predicted[n]
    state.block_sizes.append(ids.shape[1])
    state.offset += 1 + n
    state.cache.truncate(state.offset)
    state.commit(draft[:n] + [bonus])
    return n


def sampled_chain(state: DecodeState, draft: list[int], p: torch.Tensor,
                  q: list[torch.Tensor] | None) -> tuple[int, int]:
    """Speculative sampling along a chain: (drafts accepted, the token after them)."""
    for i, x in enumerate(draft):
        q_i = q[i] if q is not None else None
        if not accepts(state.rng, float(p[i, x]), float(q_i[x]) if q_i is not None else 1.0):
            return i, draw(state.rng, residual(p[i], q_i, x))
    return len(draft), draw(state.rng, p[len(draft)])


class Tree:
    """A draft tree's static buffers, built once: node 0 is the root (the pending token).

    `parents[i]` is node i's parent (-1 for the root), nodes ordered so parents come first.
    `mask[i, j]` is True where node j is node i itself or an ancestor; `depths[i]` its distance
    from the root (position offset); `paths` the root-to-leaf node lists.
    """

    def __init__(self, parents: list[int]):
        if not parents or parents[0] != -1 or any(not 0 <= p < i for i, p in
                                                  enumerate(parents) if i):
            raise SpecbenchError("a tree needs node 0 as root and every parent before its child")
        n = len(parents)
        self.parents = list(parents)
        # Set by whoever builds the tree, when it has them: each node's candidate ranks from the
        # root (from_choices: Medusa-style static trees) and each node's path log-probability
        # (EAGLE-2's dynamic trees).
        self.choices: list[tuple[int, ...]] | None = None
        self.scores: list[float] | None = None
        self.depths = [0] * n
        # Built in numpy: REST makes a new tree every step, and row-by-row torch ops on a
        # 64-node mask cost a sizeable share of a small model's forward.
        mask = np.eye(n, dtype=bool)
        for i, p in enumerate(parents[1:], start=1):
            self.depths[i] = self.depths[p] + 1
            mask[i] |= mask[p]
        self.mask = torch.from_numpy(mask)
        has_child = set(parents[1:])
        self.paths = [self.path_to(i) for i in range(n) if i not in has_child]
        self.children: list[list[int]] = [[] for _ in range(n)]
        for i, p in enumerate(parents[1:], start=1):
            self.children[p].append(i)

    @classmethod
    def from_choices(cls, choices: list[tuple[int, ...]]) -> "Tree":
        """Medusa's form: each choice is a tuple of top-k ranks, one per depth; the node's
        parent is the choice without its last rank. Node order: by depth, then by ranks."""
        ordered = sorted({tuple(c) for c in choices}, key=lambda c: (len(c), c))
        index = {(): 0}
        parents = [-1]
        for c in ordered:
            if c[:-1] not in index:
                raise SpecbenchError(f"tree choice {list(c)} has no parent {list(c[:-1])} in the tree")
            index[c] = len(parents)
            parents.append(index[c[:-1]])
        tree = cls(parents)
        tree.choices = [()] + ordered
        return tree

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return max(self.depths)

    def path_to(self, node: int) -> list[int]:
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@dataclass
class TreeResult:
    accepted: int               # drafted tokens accepted (bonus not counted)
    path: list[int]             # the accepted nodes, root first (the root is the pending token)
    hidden: torch.Tensor        # final normed hidden states at those nodes (len(path), H)


def verify_tree(state: DecodeState, tree: Tree, tokens: list[int],
                forward: Callable | None = None, sampled_select: Callable | None = None
                ) -> TreeResult:
    """Verify a tree of candidates in one forward and commit the first longest accepted path.

    `tokens[i]` is node i's token for nodes 1..n-1 (`tokens[0]` is ignored: the root is the
    pending token). Each node sees the committed prefix and its own ancestors; its position is
    offset + depth. The accepted path's cache rows are moved into place (keep-rows).

    `forward(ids, offset, positions, block_mask)` → (logits, hidden) may replace the full-model
    forward (a method that reads every node's logits, or appends a branch of its own after the
    tree's n nodes); it writes the block's rows at `offset` into `state.cache` and returns the
    logits and final hidden states of the tree's nodes, in node order, first.

    `sampled_select(state, tree, tokens, p)` → (accepted nodes, bonus token) may replace the
    lossless rejection walk when sampling (Medusa's lossy typical acceptance)."""
    engine = state.engine
    ids = torch.tensor([[state.pending] + list(tokens[1:])], device=engine.device)
    positions = state.offset + torch.tensor(tree.depths, device=engine.device)
    with state.phase("verify"):
        if forward:
            logits, hidden = forward(ids, state.offset, positions, tree.mask)
        else:
            logits, hidden = engine(ids, state.cache, state.offset, positions=positions,
                                    block_mask=tree.mask, return_hidden=True)
        if state.sampling:
            kept, bonus = (sampled_select or sampled_walk)(
                state, tree, tokens, state.sampling.probs(logits[0, :len(tree)]))
        else:
            kept, bonus = greedy_path(tree, tokens, logits[0, :len(tree)].argmax(-1).tolist())
    state.block_sizes.append(ids.shape[1])
    state.cache.keep_rows([state.offset + j for j in kept], state.offset)
    state.offset += len(kept)
    state.commit([tokens[j] for j in kept[1:]] + [bonus])
    return TreeResult(len(kept) - 1, kept, hidden[0, kept])


def greedy_path(tree: Tree, tokens: list[int], predicted: list[int]) -> tuple[list[int], int]:
    """The first longest root path whose every node is the target's argmax after its parent."""
    best, best_len = tree.paths[0], 0
    for path in tree.paths:
        n = accepted_prefix([tokens[j] for j in path[1:]], [predicted[j] for j in path[:-1]])
        if n > best_len:
            best, best_len = path, n
    kept = best[:best_len + 1]
    return kept, predicted[kept[-1]]


def sampled_walk(state: DecodeState, tree: Tree, tokens: list[int],
                 p: torch.Tensor) -> tuple[list[int], int]:
    """Recursive rejection sampling down the tree (drafts chosen deterministically): at each
    node its children are tried in order against the residual distribution."""
    node, kept = 0, [0]
    while True:
        rest = p[node]
        for child in tree.children[node]:
            x = tokens[child]
            if accepts(state.rng, float(rest[x])):
                node = child
                kept.append(child)
                break
            rest = residual(rest, None, x)
        else:
            return kept, draw(state.rng, rest)
