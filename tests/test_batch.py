"""Several sequences decoded together (engine/batch.py): every method's tokens equal its own
unbatched ones, per sequence, with mixed prompt lengths, different budgets and EOS; the joined
forward writes each sequence's cache rows as a forward of its own would."""

import pytest
import torch

from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.engine.batch import Batch, BatchEngine, Segment, Segments, run_batch
from specbench_cli.methods import METHODS
from specbench_cli.methods.base import generate_batch, on_engine
from specbench_cli.methods.verify import Sampling, Tree
from conftest import assert_sums_close, model_sums
from test_methods import PROMPTS, make, random_eagle_head

BUDGETS = [40, 7, 25, 1]            # sequences that finish at different steps
# Methods that learn across answers (Token Recycling's matrix, SuffixDecoding's global trie,
# SAM's recycling fallback) draft differently in a second pass: only their tokens must agree.
LEARNING = {"recycling", "sam", "suffix"}


def prompts_of(tok):
    return [build_prompt_ids(tok, "vicuna_v1.1", [t], []) for t in PROMPTS]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_batched_equals_alone(tiny_engine, name):
    engine, tok = tiny_engine
    method = make(name, engine, {2}, tok)
    prompts = prompts_of(tok)
    alone = [method.generate(p, n) for p, n in zip(prompts, BUDGETS)]
    together = generate_batch(method, prompts, BUDGETS)
    for a, b, n in zip(alone, together, BUDGETS):
        assert b.tokens == a.tokens, name
        if name not in LEARNING:
            assert b.accept_lengths == a.accept_lengths, name
        assert len(b.tokens) == n or b.tokens[-1] == 2


@pytest.mark.parametrize("name", ["vanilla", "pld", "lookahead", "eagle", "sps"])
def test_eos_inside_an_accepted_block_ends_only_its_sequence(tiny_engine, name):
    """The k-th token of one sequence's answer taken as EOS: that sequence stops right after
    it, in the middle of a batch whose other sequences go on to their budgets."""
    engine, tok = tiny_engine
    prompts = prompts_of(tok)[:3]
    full = [METHODS["vanilla"](engine, set()).generate(p, 30).tokens for p in prompts]
    eos = {full[0][5]}
    method = make(name, engine, eos, tok)
    together = generate_batch(method, prompts, [30, 30, 30])
    for answer, whole in zip(together, full):
        cut = next((i + 1 for i, t in enumerate(whole) if t in eos), len(whole))
        assert answer.tokens == whole[:cut]


def test_samd_eagle_batched_equals_alone(tiny_engine):
    """SAMD[EAGLE2] keeps per-generation state (its automaton tracker): one per thread."""
    engine, tok = tiny_engine
    method = METHODS["sam"](engine, {2}, tok, auxiliary="eagle", head=random_eagle_head(engine),
                            min_match=1)
    prompts = prompts_of(tok)
    alone = [method.generate(p, 40).tokens for p in prompts]
    assert [g.tokens for g in generate_batch(method, prompts, 40)] == alone


@pytest.mark.parametrize("name", ["vanilla", "pld", "sps", "medusa", "eagle"])
def test_sampling_batched_equals_alone(tiny_engine, name):
    """Each sequence draws from its own generator seeded by its prompt, so a batch samples
    the very tokens each sequence samples alone: its distribution is the target's. (Methods
    that learn across answers draft differently in a batch, so they draw differently: the
    chi-square suite checks those.)"""
    from specbench_cli.methods.base import Decoding
    engine, tok = tiny_engine
    method = make(name, engine, {2}, tok)
    decoding = Decoding(Sampling(1.0, seed=3))
    prompts = prompts_of(tok)
    alone = [method.generate(p, 30, decoding).tokens for p in prompts]
    assert [g.tokens for g in generate_batch(method, prompts, 30, decoding=decoding)] == alone


@pytest.mark.parametrize("path", ["modules", "fused"])
def test_joined_forward_writes_each_cache_as_alone(tiny_engine, path):
    """Three sequences' blocks side by side — a prefill, a chain after 5 rows, a tree after 9 —
    give each the hidden states and cache rows its own forward gives: through torch's modules
    (close), and through cpu.c's fused step (bit-equal: no row depends on the others)."""
    from specbench_cli.engine.fused import FusedLayers, why_not
    engine, _ = tiny_engine
    if path == "fused" and why_not(engine):
        pytest.skip(f"no fused step here: {why_not(engine)}")
    saved, engine.fused = engine.fused, FusedLayers(engine) if path == "fused" else None
    calls = []
    if engine.fused is not None:
        run = engine.fused.run_segments
        engine.fused.run_segments = lambda h, *a: calls.append(h.shape[1]) or run(h, *a)
    try:
        check_joined_forward(engine, exact=path == "fused")
    finally:
        engine.fused = saved
    assert (14 in calls) == (path == "fused")     # the joined 6 + 3 + 5 rows in one call


def check_joined_forward(engine, exact: bool):
    def close(a, b):
        # torch's path: a joined block of 14 rows may run other products than a block alone
        # (the kernels are chosen per block size), equal up to summation order
        if exact:
            return torch.equal(a, b)
        assert_sums_close(a, b, **model_sums(engine.config))
        return True
    torch.manual_seed(0)
    tree = Tree([-1, 0, 0, 1, 2])
    blocks = [  # (ids, rows already in the cache, block mask, positions)
        (torch.randint(3, 90, (1, 6)), 0, None, None),
        (torch.randint(3, 90, (1, 3)), 5, None, None),
        (torch.randint(3, 90, (1, 5)), 9, tree.mask, 9 + torch.tensor(tree.depths))]
    history = [torch.randint(3, 90, (1, rows)) for _, rows, _, _ in blocks]
    alone, caches, requests = [], [], []
    with torch.inference_mode():
        for (ids, rows, mask, positions), past in zip(blocks, history):
            mine, joined = engine.new_cache(32), engine.new_cache(32)
            if rows:
                engine(past, mine, 0)
                engine(past, joined, 0)
            alone.append(engine.layers(engine.embed(ids), 0, engine.num_layers, mine, rows,
                                       positions, mask))
            caches.append((mine, joined))
            requests.append(dict(h=engine.embed(ids), cache=joined, offset=rows,
                                 positions=positions, block_mask=mask, rope=None))
        out = Batch(engine).joined_layers(("layers", 0, engine.num_layers), requests)
    for a, b, (mine, joined), (ids, rows, _, _) in zip(alone, out, caches, blocks):
        assert close(a, b)
        end = rows + ids.shape[1]
        assert joined.lengths == mine.lengths == [end] * engine.num_layers
        assert close(joined.k[:, :, :, :end], mine.k[:, :, :, :end])
        assert close(joined.v[:, :, :, :end], mine.v[:, :, :, :end])


def test_segments_attend_with_each_sequence_mask(tiny_engine):
    """A query sees only its own sequence's rows: the joined attention of two sequences with
    different cache contents equals each one's attention alone."""
    engine, _ = tiny_engine
    attn = engine.model.layers[0].self_attn
    hd, heads = attn.head_dim, attn.n_heads
    torch.manual_seed(1)
    q = torch.randn(1, heads, 5, hd)
    k, v = torch.randn(1, attn.n_kv, 5, hd), torch.randn(1, attn.n_kv, 5, hd)
    caches = [engine.new_cache(16), engine.new_cache(16)]
    for cache, rows in zip(caches, (4, 7)):
        cache.write(0, 0, torch.randn(1, attn.n_kv, rows, hd), torch.randn(1, attn.n_kv, rows, hd))
    masks = [engine.attention_mask(4, 2, None), engine.attention_mask(7, 3, Tree([-1, 0, 0]).mask)]
    segments = Segments([Segment(caches[0], 4, 2, masks[0]), Segment(caches[1], 7, 3, masks[1])])
    joined = segments.attend(attn, 0, q, k, v)
    alone = [engine.new_cache(16), engine.new_cache(16)]
    for mine, cache, rows in zip(alone, caches, (4, 7)):
        mine.write(0, 0, cache.k[0, :, :, :rows], cache.v[0, :, :, :rows])
    first = attn.attend(q[:, :, :2], k[:, :, :2], v[:, :, :2], alone[0], 0, 4, masks[0])
    second = attn.attend(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], alone[1], 0, 7, masks[1])
    assert torch.allclose(joined, torch.cat([first, second], dim=2), atol=1e-6)


def test_a_failing_sequence_stops_the_batch_with_its_error(tiny_engine):
    engine, tok = tiny_engine
    method = METHODS["vanilla"](engine, {2})
    prompts = prompts_of(tok)

    def broken():
        method.generate(prompts[0], 3)
        raise ValueError("sequence 2 broke")

    with on_engine(method, BatchEngine(engine)):
        with pytest.raises(ValueError, match="sequence 2 broke"):
            run_batch(engine, [lambda: method.generate(prompts[1], 20), broken,
                               lambda: method.generate(prompts[2], 20)])
    # the engine is usable afterwards, unbatched and batched
    assert METHODS["vanilla"](engine, {2}).generate(prompts[0], 3).tokens
    assert len(generate_batch(method, prompts[:2], 3)) == 2


def test_joined_forwards_count_once_per_round(tiny_engine):
    """Two vanilla sequences of 5 tokens: one joined prefill, then a joined step per token
    (layers and LM head), not one per sequence."""
    engine, tok = tiny_engine
    method = METHODS["vanilla"](engine, set())
    prompts = prompts_of(tok)[:2]
    batch = Batch(engine)
    with on_engine(method, BatchEngine(engine)):
        batch.run([lambda p=p: method.generate(p, 5) for p in prompts])
    # prefill + 4 steps (the 5th token comes from the 4th step's logits), each layers + logits
    assert batch.forwards == 2 * 5


@pytest.mark.parametrize("name", ["vanilla", "pld", "eagle", "medusa"])
def test_continuous_batch_refills_and_equals_alone(tiny_engine, name):
    """Width 2 over four sequences: never more than two decode at once, a finished one's place
    goes to the next at once (the third starts before the longest first one ends), and every
    sequence's tokens are its own unbatched ones."""
    engine, tok = tiny_engine
    method = make(name, engine, {2}, tok)
    prompts = prompts_of(tok)
    alone = [method.generate(p, n).tokens for p, n in zip(prompts, BUDGETS)]
    events, running = [], set()

    def job(i):
        running.add(i)
        events.append(("start", i, len(running)))
        tokens = method.generate(prompts[i], BUDGETS[i]).tokens
        running.discard(i)
        events.append(("end", i))
        return tokens

    with on_engine(method, BatchEngine(engine)):
        together = run_batch(engine, [lambda i=i: job(i) for i in range(4)], width=2)
    assert together == alone
    assert max(e[2] for e in events if e[0] == "start") == 2
    order = [e[:2] for e in events]
    assert order.index(("end", 1)) < order.index(("start", 2)) < order.index(("end", 0))


def test_a_refilled_sequence_joins_the_others_forwards(tiny_engine):
    """Vanilla, budgets 5, 3, 4, 2 at width 2: the third starts in the round the second ends and
    the fourth in the round the first ends, each joining the others' forwards at once, so the
    batch takes 7 rounds of (layers, LM head), not more."""
    engine, tok = tiny_engine
    method = METHODS["vanilla"](engine, set())
    prompts = prompts_of(tok)
    batch = Batch(engine)
    with on_engine(method, BatchEngine(engine)):
        out = batch.run([lambda p=p, n=n: method.generate(p, n).tokens
                         for p, n in zip(prompts, [5, 3, 4, 2])], width=2)
    assert [len(t) for t in out] == [5, 3, 4, 2]
    assert batch.forwards == 2 * 7
