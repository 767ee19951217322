"""EAGLE-1/2: a draft head over the target's features gives exactly vanilla's greedy tokens on
every architecture; the official checkpoint layout loads strictly; the dynamic tree drafts what
the head computes without a cache; the trainer learns."""

import json

import pytest
import torch

from conftest import TINY, check_length_and_eos_edges, make_model_folder
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.drafters.eagle import EagleError, EagleHead, load_head
from specbench_cli.methods.eagle import select_nodes
from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.train.eagle import train_eagle

PROMPTS = ["Summarize: the cat sat on the mat. the cat sat on the mat again.",
           "Translate German to English: Guten Morgen!", "abcabcabcabc", "x"]
TREES = ({}, {"total_tokens": 5, "depth": 2, "top_k": 2}, {"total_tokens": 40, "depth": 6,
                                                           "top_k": 12}, {"tree": "budget16"})
H, V, I = TINY["hidden_size"], TINY["vocab_size"], TINY["intermediate_size"]


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def target(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok


def random_head(engine, seed=0, scale=1.0):
    torch.manual_seed(seed)
    head = EagleHead(engine.config)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(scale)
    return head


def vanilla(engine, ids, n, eos=frozenset({2})):
    return METHODS["vanilla"](engine, set(eos)).generate(ids, n).tokens


def test_random_head_equals_vanilla(target):
    engine, tok = target
    head = random_head(engine)
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = vanilla(engine, ids, 60)
        for options in TREES:
            gen = METHODS["eagle"](engine, {2}, tok, head=head, **options).generate(ids, 60)
            assert gen.tokens == want, (text, options)
            assert sum(gen.accept_lengths) == len(gen.tokens)
            assert gen.stats["rounds"] == len(gen.accept_lengths) - 1   # the prefill commits 1


def test_length_and_eos_edges(target):
    engine, tok = target
    head = random_head(engine, seed=1)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    check_length_and_eos_edges(lambda eos: METHODS["eagle"](engine, eos, tok, head=head),
                               engine, ids)


def reference_logp(method, features, tokens):
    """The head run without a cache over a whole sequence: its draft log-probabilities at the
    last position."""
    engine = method.engine
    rope = engine.rope(torch.arange(len(tokens)))
    out = method.head(features, engine.embed(torch.tensor([tokens])), rope, None, 0)
    return method.draft_logp(out[:, -1:])[0]


def fp32_slack(logp):
    """The rounding a cached and an uncached fp32 pass may differ by in one log-probability. It
    grows with the logits' spread (hundreds with the scaled random head), and the kernels' order
    of summation differs between CPUs: an AMD EPYC differed by 1e-3 at a spread of 775. A wrong
    position, mask or cache row moves log-probabilities by whole units."""
    return max(1e-4, 4e-6 * float(logp.max() - logp.min()))


@pytest.mark.parametrize("options", TREES[1:], ids=["small", "wide", "static"])
def test_every_drafted_node_is_what_the_head_computes_without_a_cache(tiny_engine, options):
    """Node by node, the tree's children are the top ranks of the head's distribution along the
    node's own path, computed from scratch: positions, the tree mask over drafted rows and the
    cache rows are right. Drafting runs after a verification, so the head's cache holds caught-up
    rows too."""
    engine, tok = tiny_engine
    method = METHODS["eagle"](engine, set(), tok, head=random_head(engine, scale=3.0), **options)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    from specbench_cli.methods.verify import GREEDY, DecodeState, verify_tree
    state = DecodeState(engine, ids, 50, set(), GREEDY)
    cache = engine.new_cache(len(ids) + 200, 1)
    out = method.catch_up(cache, state.hidden, state.tokens[1:], 0)
    committed_features = state.hidden
    draft = method.static_tree if method.tree else method.dynamic_tree
    for _ in range(2):               # draft, verify, catch up, draft again
        start = state.offset
        tree, tokens, _ = draft(out, start, cache)
        features = {0: out[0, 0]}     # node → the feature the head predicts from it
        for node in range(len(tree)):
            path = tree.path_to(node)
            feats = torch.cat([committed_features[0]] + [features[p][None] for p in path[:-1]])
            seq = state.tokens[1:] + [tokens[p] for p in path[1:]]
            logp = reference_logp(method, feats[None], seq)
            children = [c for c in range(len(tree)) if tree.parents[c] == node]
            if method.tree:          # static: the child of rank r is the r-th best draft
                ranks = logp.topk(10).indices.tolist()
                assert all(tokens[c] == ranks[tree.choices[c][-1]] for c in children)
            for c in children if not method.tree else ():
                # dynamic: a child's path log-probability adds its own to its parent's
                want = tree.scores[node] + float(logp[tokens[c]])
                assert tree.scores[c] == pytest.approx(want, abs=fp32_slack(logp)), (node, c)
            if children and node:
                rope = engine.rope(torch.arange(len(seq)))
                full = method.head(feats[None], engine.embed(torch.tensor([seq])), rope, None, 0)
                features[node] = full[0, -1]
        result = verify_tree(state, tree, tokens)
        cache.truncate(start)
        out = method.catch_up(cache, result.hidden[None],
                              state.tokens[start + 1:start + 1 + len(result.path)], start)
        committed_features = torch.cat((committed_features, result.hidden[None]), dim=1)


def test_select_nodes_is_prefix_closed_under_ties():
    # node ids 1..6 (index + 1); parents: 1,2 ← root; 3,4 ← 1; 5 ← 3; 6 ← 2.
    # Node 3's child 5 ties with it (log-probability 0); the budget of 3 must take 1 and 3 first.
    scores = torch.tensor([-0.1, -0.5, -0.2, -0.9, -0.2, -0.6])
    assert select_nodes(scores, 3) == [0, 2, 4]
    assert select_nodes(scores, 2) == [0, 2]
    assert select_nodes(scores, 10) == [0, 1, 2, 3, 4, 5]


OFFICIAL = {"embed_tokens.weight": (V, H), "fc.weight": (H, 2 * H), "fc.bias": (H,),
            "layers.0.self_attn.q_proj.weight": (H, H), "layers.0.self_attn.k_proj.weight": (H, H),
            "layers.0.self_attn.v_proj.weight": (H, H), "layers.0.self_attn.o_proj.weight": (H, H),
            "layers.0.post_attention_layernorm.weight": (H,),
            "layers.0.mlp.gate_proj.weight": (I, H), "layers.0.mlp.up_proj.weight": (I, H),
            "layers.0.mlp.down_proj.weight": (H, I)}


def official_checkpoint(folder, drop=None, bad_shape=None, extra=None, config=None):
    """The EAGLE-1/2 layout (yuhuili/EAGLE-Vicuna-7B-v1.3): a one-layer LlamaConfig with `bias`
    and pytorch_model.bin holding the head and a copy of the target's embedding table."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shapes = dict(OFFICIAL)
    if bad_shape:
        shapes[bad_shape] = (H, H // 2)
    state = {k: torch.randn(s) * 0.05 for k, s in shapes.items() if k != drop}
    state.update(extra or {})
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bias": True,
        "hidden_size": H, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": V,
        "intermediate_size": I, "rms_norm_eps": 1e-6, **(config or {})}))
    return folder


def test_official_checkpoint_loads_strictly(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    folder = official_checkpoint(tmp_path / "official")
    head, _, _ = load_head(str(folder), engine.config)
    want = torch.load(folder / "pytorch_model.bin")
    # The embedding copy is checked but not kept: the head embeds with the target's table.
    assert sorted(head.state_dict()) == sorted(set(OFFICIAL) - {"embed_tokens.weight"})
    for k, v in head.state_dict().items():
        assert torch.equal(v, want[k])
    # fc 2H² + H, attention 4H², norm H, MLP 3·H·I: the formula behind Vicuna-7B's 0.24B
    # (with its 131M-parameter embedding copy).
    assert head.num_parameters() == 2 * H * H + H + 4 * H * H + H + 3 * H * I
    method = METHODS["eagle"](engine, {2}, tok, head=str(folder))
    assert method.parameter_overhead()["params"] == head.num_parameters()
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["hello there, hello there"], [])
    assert method.generate(ids, 30).tokens == vanilla(engine, ids, 30)


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "fc.bias"}, "missing keys ['fc.bias']"),
    ({"bad_shape": "layers.0.self_attn.k_proj.weight"},
     "tensor layers.0.self_attn.k_proj.weight has shape (64, 32), needs (64, 64)"),
    ({"config": {"hidden_size": 32}}, "made for another model: hidden_size 32, the target has 64"),
    ({"bad_shape": "embed_tokens.weight"}, "its embedding table is (64, 32), the target's is "
                                           "(96, 64)"),
    ({"config": {"draft_vocab_size": 32}}, "run it with the eagle3 method"),
    ({"extra": {"d2t": torch.zeros(32, dtype=torch.long)}},
     "run it with the eagle3 method"),
    ({"extra": {"norm.weight": torch.ones(64)}}, "unexpected keys ['norm.weight']"),
])
def test_bad_checkpoints_fail_in_one_line(tiny_engine, tmp_path, kwargs, message):
    engine, _ = tiny_engine
    folder = official_checkpoint(tmp_path / "bad", **kwargs)
    with pytest.raises(EagleError) as err:
        load_head(str(folder), engine.config)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    ({"depth": 0}, "eagle.depth: must be at least 1 (got 0)"),
    ({"total_tokens": 1}, "eagle.total_tokens: must be at least 2 (got 1)"),
    ({"total_tokens": 500}, "a tree of 500 nodes is more than the 128"),
    ({"head": None}, "eagle needs a draft head: --opt eagle.head=PATH"),
])
def test_bad_options(tiny_engine, options, message):
    engine, _ = tiny_engine
    with pytest.raises(SpecbenchError) as err:
        METHODS["eagle"](engine, {2}, **{"head": EagleHead(engine.config), **options})
    assert message in str(err.value)


def test_training_lowers_the_loss_and_saves_a_loadable_head(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"conversations": [
        {"from": "human", "value": f"count {i}"},
        {"from": "gpt", "value": f"{i} {i + 1} {i + 2} and so on"}]}) + "\n" for i in range(20)))
    first = train_eagle(engine, tok, [data], tmp_path / "h1", steps=2, lr=3e-3, batch_size=4)
    last = train_eagle(engine, tok, [data], tmp_path / "h2", steps=40, lr=3e-3, batch_size=4)
    assert last["loss"] < first["loss"] and last["top1"] > first["top1"]
    head, cfg, _ = load_head(str(tmp_path / "h2"), engine.config)
    assert cfg["specbench"]["steps"] == 40 and len(cfg["specbench"]["data_sha256"]) == 64
    assert not (tmp_path / "h2" / "checkpoint.pt").exists()
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["count 3"], [])
    gen = METHODS["eagle"](engine, {2}, tok, head=head).generate(ids, 30)
    assert gen.tokens == vanilla(engine, ids, 30)
