"""EAGLE-3 and FR-Spec: equal to vanilla on three architectures; drafts only from the reduced
vocabulary, mapped to target ids; the fused features are the target's own hidden states; the
training-time test's unrolled attention is what inference computes with a cache; the official
checkpoint layout loads strictly and bad ones fail in one line; the trainer learns."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import (TINY, assert_sums_close, check_length_and_eos_edges, make_model_folder,
                      model_sums)
from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.drafters.eagle import EagleError
from specbench_cli.drafters.eagle3 import (feature_layers, frequent_tokens, load_eagle3,
                                           reduced_vocab)
from specbench_cli.engine.load import load_engine
from specbench_cli.methods import METHODS
from specbench_cli.train.data import Example
from specbench_cli.train.eagle3 import train_eagle3
from specbench_cli.train.teacher import LiveTeacher, Batch
from test_eagle import PROMPTS, TREES, random_head as random_eagle2_head, vanilla
from test_methods import random_eagle3_head

H, V = TINY["hidden_size"], TINY["vocab_size"]
KEPT = torch.arange(3, V, 2)           # every other id from 3: EOS (2) is not draftable


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def target(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok


def random_head(engine, kept=KEPT):
    return random_eagle3_head(engine, kept)


def test_feature_layers_follow_the_official_rule():
    assert feature_layers(32) == (2, 16, 29)            # Vicuna/Llama-7B
    assert feature_layers(30) == (2, 15, 27)            # SmolLM2-135M
    assert feature_layers(6) == (2, 3, 3)               # the built-in target
    assert feature_layers(4) == (2, 2, 1)
    assert feature_layers(1) == (1, 1, 1)


def test_random_head_equals_vanilla(target):
    engine, tok = target
    head = random_head(engine)
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = vanilla(engine, ids, 60)
        for options in TREES:
            gen = METHODS["eagle3"](engine, {2}, tok, head=head, **options).generate(ids, 60)
            assert gen.tokens == want, (text, options)
            assert sum(gen.accept_lengths) == len(gen.tokens)


def test_fr_spec_eagle2_equals_vanilla(target, tmp_path):
    engine, tok = target
    (tmp_path / "vocab.json").write_text(json.dumps(KEPT.tolist()))
    head = random_eagle2_head(engine)
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = METHODS["eagle"](engine, {2}, tok, head=head,
                               draft_vocab=str(tmp_path / "vocab.json")).generate(ids, 60)
        assert gen.tokens == vanilla(engine, ids, 60), text


def test_length_and_eos_edges(tiny_engine):
    engine, tok = tiny_engine
    head = random_head(engine, kept=torch.arange(V))    # EOS draftable too
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    check_length_and_eos_edges(lambda eos: METHODS["eagle3"](engine, eos, tok, head=head),
                               engine, ids)


@pytest.mark.parametrize("method", ["eagle3", "eagle"])
def test_drafts_come_only_from_the_reduced_vocabulary(tiny_engine, tmp_path, method):
    """Every drafted token is a kept target id, and it is the head's top draft-vocabulary
    choice mapped through d2t (FR-Spec: through the id list)."""
    engine, tok = tiny_engine
    (tmp_path / "vocab.json").write_text(json.dumps(KEPT.tolist()))
    options = {"head": random_head(engine)} if method == "eagle3" else \
        {"head": random_eagle2_head(engine), "draft_vocab": str(tmp_path / "vocab.json")}
    m = METHODS[method](engine, set(), tok, total_tokens=20, depth=3, top_k=4, **options)
    assert m.draft_vocab_size == len(KEPT) and m.info()["draft_vocab"] == len(KEPT)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    from specbench_cli.methods.verify import GREEDY, DecodeState
    state = DecodeState(engine, ids, 20, set(), GREEDY, prefill=m.prefill)
    cache = engine.new_cache(len(ids) + 64, 1)
    out = m.catch_up(cache, state.hidden, state.tokens[1:], 0)
    tree, tokens, _ = m.dynamic_tree(out, state.offset, cache)
    assert set(tokens[1:]) <= set(KEPT.tolist())
    first = KEPT[m.draft_logp(out)[0].topk(4).indices].tolist()
    children = [tokens[i] for i in range(1, len(tree)) if tree.parents[i] == 0]
    assert first[0] in children and set(children) <= set(first)


def test_features_are_the_hidden_states_entering_the_chosen_layers(tiny_engine):
    engine, tok = tiny_engine
    m = METHODS["eagle3"](engine, set(), tok, head=random_head(engine))
    ids = torch.tensor([build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])])
    logits, features = m.target_forward(ids, engine.new_cache(ids.shape[1]), 0)
    batch = Batch(ids, torch.ones_like(ids, dtype=torch.bool), [0])
    teacher = LiveTeacher(engine)
    want = torch.cat([teacher.hidden(batch, layer) for layer in (2, 2, 1)], -1)
    assert features.shape == (1, ids.shape[1], 3 * H)
    # the teacher runs without autograd (the session's chosen kernels), target_forward with it
    # (F.linear): equal up to summation order through 2 layers; another layer's states would
    # be off by orders more
    assert_sums_close(features, want, **{**model_sums(engine.config), "depth": 2})
    assert_sums_close(logits, engine(ids, engine.new_cache(ids.shape[1]), 0),
                      **model_sums(engine.config))


def test_training_time_test_attends_as_inference_does(tiny_engine):
    """Unrolled step 1 at position t (no cache, the diagonal mask) equals the head fed, with a
    cache, the committed rows 0..t and then its own output at t as a drafted node."""
    engine, tok = tiny_engine
    head = random_head(engine)
    n = 12
    torch.manual_seed(3)
    features = torch.randn(1, n, 3 * H)
    ids = torch.randint(3, V, (1, n + 1))
    embeds = engine.embed(ids)
    layer = head.midlayer
    past = []
    cos, sin = engine.rope(torch.arange(n))
    step0 = layer.unrolled(embeds[:, 1:n + 1], head.fc(features), cos, sin, past)
    cos, sin = engine.rope(torch.arange(1, n + 1))
    step1 = layer.unrolled(torch.cat((embeds[:, 2:n + 1], embeds[:, :1]), 1), step0, cos, sin,
                           past)
    for t in (0, 4, n - 2):
        cache = engine.new_cache(64, 1)
        rows = head(features[:, :t + 1], embeds[:, 1:t + 2], engine.rope(torch.arange(t + 1)),
                    cache, 0, engine.attention_mask(0, t + 1, None))
        torch.testing.assert_close(rows[0, t], step0[0, t])
        node = head(rows[:, t:t + 1], embeds[:, t + 2:t + 3],
                    engine.rope(torch.tensor([t + 1])), cache, t + 1, None)
        torch.testing.assert_close(node[0, 0], step1[0, t])


def official_checkpoint(folder, engine, draft_vocab=40, drop=None, config=None, extra=None,
                        weights="pytorch_model.bin"):
    """config.json and weights as the public EAGLE-3 code saves them: fc, midlayer.* (q/k/v
    over 2H), norm, lm_head over the draft vocabulary, d2t/t2d, and a copy of the embeddings."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(5)
    heads, kv, hd, inter = 4, engine.config.num_kv_heads, 16, TINY["intermediate_size"]
    kept = torch.arange(3, 3 + 2 * draft_vocab, 2)
    state = {"fc.weight": (3 * H, H), "midlayer.hidden_norm.weight": (H,),
             "midlayer.input_layernorm.weight": (H,),
             "midlayer.post_attention_layernorm.weight": (H,),
             "midlayer.self_attn.q_proj.weight": (2 * H, heads * hd),
             "midlayer.self_attn.k_proj.weight": (2 * H, kv * hd),
             "midlayer.self_attn.v_proj.weight": (2 * H, kv * hd),
             "midlayer.self_attn.o_proj.weight": (heads * hd, H),
             "midlayer.mlp.gate_proj.weight": (H, inter), "midlayer.mlp.up_proj.weight": (H, inter),
             "midlayer.mlp.down_proj.weight": (inter, H), "norm.weight": (H,),
             "lm_head.weight": (H, draft_vocab), "embed_tokens.weight": (H, V)}
    state = {k: torch.randn(*reversed(s), generator=gen) * 0.3 for k, s in state.items()}
    state["d2t"] = kept - torch.arange(draft_vocab)
    state["t2d"] = torch.zeros(V, dtype=torch.bool)
    state["t2d"][kept] = True
    state.update(extra or {})
    if drop:
        del state[drop]
    if weights.endswith(".bin"):
        torch.save(state, folder / weights)
    else:
        save_file(state, str(folder / weights))
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": H, "vocab_size": V,
           "draft_vocab_size": draft_vocab, "num_attention_heads": heads,
           "num_key_value_heads": kv, "intermediate_size": inter, "num_hidden_layers": 1,
           **(config or {})}
    cfg = {k: v for k, v in cfg.items() if v is not None}      # None: leave the key out
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, state


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_official_checkpoint_loads_strictly(tiny_engine, tmp_path, weights):
    engine, tok = tiny_engine
    folder, state = official_checkpoint(tmp_path / "e3", engine, weights=weights)
    head, _ = load_eagle3(str(folder), engine.config, engine.num_layers)
    loaded = head.state_dict()
    for name, t in state.items():
        if name != "embed_tokens.weight":
            assert torch.equal(loaded[name], t), name
    assert head.layers_used == feature_layers(engine.num_layers)
    m = METHODS["eagle3"](engine, {2}, tok, head=str(folder))
    assert m.parameter_overhead()["params"] == sum(t.numel() for k, t in state.items()
                                                   if k not in ("d2t", "t2d",
                                                                "embed_tokens.weight"))
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[2]], [])
    assert m.generate(ids, 40).tokens == vanilla(engine, ids, 40)
    # FR-Spec on EAGLE-2 reads the same vocabulary from the folder.
    assert torch.equal(reduced_vocab(str(folder)), torch.arange(3, 83, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "d2t"}, "d2t missing"),
    ({"drop": "midlayer.hidden_norm.weight"}, "missing keys ['midlayer.hidden_norm.weight']"),
    ({"config": {"hidden_size": 32}}, "made for another model: hidden_size 32, the target has 64"),
    ({"config": {"draft_vocab_size": None}}, "no draft_vocab_size (an EAGLE-1/2 head?"),
    ({"extra": {"d2t": torch.full((40,), 500)}}, "d2t maps outside the target's vocabulary"),
    ({"extra": {"embed_tokens.weight": torch.zeros(V, 32)}}, "its embedding table is (96, 32)"),
])
def test_bad_checkpoints_fail_in_one_line(tiny_engine, tmp_path, kwargs, message):
    engine, _ = tiny_engine
    folder, _ = official_checkpoint(tmp_path / "bad", engine, **kwargs)
    with pytest.raises(EagleError) as err:
        load_eagle3(str(folder), engine.config, engine.num_layers)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_draft_vocab_is_one_line(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(EagleError, match="neither an EAGLE-3 head folder nor a JSON list"):
        METHODS["eagle"](engine, {2}, tok, head=random_eagle2_head(engine),
                         draft_vocab=str(tmp_path / "v.json"))
    (tmp_path / "v.json").write_text(json.dumps([5, 1000]))
    with pytest.raises(Exception, match="ids outside the target's vocabulary"):
        METHODS["eagle"](engine, {2}, tok, head=random_eagle2_head(engine),
                         draft_vocab=str(tmp_path / "v.json"))


def test_frequent_tokens_counts_answer_tokens_only():
    examples = [Example([5, 6, 6, 7, 7, 7], [False, False, True, True, True, True]),
                Example([9, 9, 9, 9, 8], [True, False, False, False, True])]
    # answer counts: 7×3, 6×1, 8×1, 9×1; ties by id
    assert frequent_tokens(examples, 2, 12).tolist() == [6, 7]
    assert frequent_tokens(examples, 4, 12).tolist() == [6, 7, 8, 9]


def test_trained_head_loads_back_and_drafts_well(tiny_engine, tmp_path, counting_chats):
    engine, tok = tiny_engine
    first = train_eagle3(engine, tok, [counting_chats], tmp_path / "h0", steps=2, lr=1e-2,
                         batch_size=4, draft_vocab=8, ttt=3)
    metrics = train_eagle3(engine, tok, [counting_chats], tmp_path / "h", steps=60, lr=1e-2,
                           batch_size=4, draft_vocab=8, ttt=3)
    assert metrics["loss"] < first["loss"] and metrics["top1_s1"] > 0.5
    head, _ = load_eagle3(str(tmp_path / "h"), engine.config, engine.num_layers)
    assert len(head.d2t) == 8 and head.t2d.sum() == 8
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["Count."], [])
    gen = METHODS["eagle3"](engine, {2}, tok, head=str(tmp_path / "h")).generate(ids, 30)
    assert gen.tokens == vanilla(engine, ids, 30)
