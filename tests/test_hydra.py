"""Hydra: equality with vanilla on three architectures (random heads, own or shared LM head,
cut to fewer heads, greedy and typical-free trees, the prefix-mlp variant), drafting that
depends on each node's path, the prefix layer's cached catch-up against a pass over the whole
text, the official checkpoint layouts, the trainer's output loading back, bad folders."""

import json

import pytest
import torch

from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.drafters.hydra import HydraError, PrefixLayer, load_hydra
from specbench_cli.drafters.medusa import TOP_K
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS
from specbench_cli.methods.hydra import Hydra
from specbench_cli.train.hydra import train_hydra

from conftest import check_length_and_eos_edges, make_model_folder
from test_methods import PROMPTS, random_hydra_heads as random_heads


@pytest.fixture(scope="module", params=["llama", "gqa", "qkv_bias"])
def engine_of(request, tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp(request.param) / "m", request.param)
    engine, tok, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    return engine, tok


@pytest.mark.parametrize("options", [{}, {"num_heads": 2, "tree": "budget32"},
                                     {"tree": "budget64"}])
@pytest.mark.parametrize("shared", [False, True])
def test_hydra_equals_vanilla(engine_of, options, shared):
    engine, tok = engine_of
    method = METHODS["hydra"](engine, {2}, tok, heads=random_heads(engine, shared=shared),
                              **options)
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = method.generate(ids, 50)
        assert gen.tokens == METHODS["vanilla"](engine, {2}).generate(ids, 50).tokens, text
        assert sum(gen.accept_lengths) == len(gen.tokens)


@pytest.mark.parametrize("options", [{}, {"tree": "budget64", "num_heads": 2}])
def test_prefix_mlp_hydra_equals_vanilla(engine_of, options):
    engine, tok = engine_of
    heads = random_heads(engine, prefix=True, scale=0.3)
    method = METHODS["hydra"](engine, {2}, tok, heads=heads, **options)
    for text in PROMPTS:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        gen = method.generate(ids, 50)
        assert gen.tokens == METHODS["vanilla"](engine, {2}).generate(ids, 50).tokens, text
        assert sum(gen.accept_lengths) == len(gen.tokens)


def test_prefix_layer_catches_up_as_one_pass_over_the_text(tiny_engine):
    """The reader feeds the prefix layer the rows of each step through its KV cache; its
    output at the last row must be what the layer gives over the whole text at once."""
    engine, tok = tiny_engine
    method = Hydra(engine, {2}, tok, heads=random_heads(engine, prefix=True, scale=0.3))
    prefix = method.heads.prefix_embeding_layer
    rows = torch.randn(23, engine.config.hidden_size)
    read, start = method.reader(64), 0
    for n in (9, 1, 4, 2, 7):                  # a prompt, then steps accepting 0, 3, 1, 6
        got = read(rows[start:start + n], start)
        start += n
        whole = prefix(rows[None, :start], engine.rope(torch.arange(start)))
        assert torch.allclose(got, whole[0, -1:], atol=1e-5), start


def test_length_and_eos_edges(tiny_engine):
    engine, tok = tiny_engine
    heads = random_heads(engine)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    check_length_and_eos_edges(lambda eos: METHODS["hydra"](engine, eos, tok, heads=heads),
                               engine, ids)


def test_children_come_from_each_nodes_own_path(tiny_engine):
    """Every node's token is head d's rank-r candidate given the hidden state and the
    embeddings of that node's own path, computed here node by node."""
    engine, tok = tiny_engine
    method = Hydra(engine, {2}, tok, heads=random_heads(engine), tree="budget32")
    hidden = torch.randn(1, engine.config.hidden_size)
    tokens = method.candidates(hidden, 7)
    tree = method.tree
    assert tokens[0] == 7
    for i in range(1, len(tree)):
        path = tree.path_to(i)
        inputs = torch.cat([hidden[0]] + [engine.embed(torch.tensor([tokens[j]]))[0]
                                          for j in path[:-1]])
        ranks = method.heads(len(path) - 2, inputs[None]).topk(TOP_K, -1).indices[0]
        assert tokens[i] == int(ranks[tree.choices[i][-1]])
    # The heads read the path, not only the depth: head 1 scores differ between the two
    # first depth-1 nodes as parents (else the node-by-node check above would hold for
    # heads that ignore the path too).
    root = engine.embed(torch.tensor([7]))[0]
    scores = [method.heads(1, torch.cat([hidden[0], root,
                                         engine.embed(torch.tensor([tokens[i]]))[0]])[None])
              for i in (1, 2)]
    assert tokens[1] != tokens[2] and not torch.allclose(*scores)


def official_checkpoint(folder, engine, num_heads=3, num_layers=2, arch="mlp"):
    """hydra_lm_head.pt and config.json as the public Hydra code saves them: Sequential
    (dropout, ResBlock, dropout, ResBlock, …) per head and (dropout, Linear with bias); for
    prefix-mlp also the one-layer Llama model (`prefix_embeding_layer.`, with its unused
    embedding table and rotary buffer)."""
    hidden, vocab = engine.config.hidden_size, engine.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    state = {}
    if arch == "prefix-mlp":
        layer = {k: torch.randn(v.shape, generator=gen) * 0.3
                 for k, v in PrefixLayer(engine.config).state_dict().items()}
        state.update({f"prefix_embeding_layer.{k}": v for k, v in layer.items()})
        state["prefix_embeding_layer.embed_tokens.weight"] = torch.randn(vocab, hidden)
        state["prefix_embeding_layer.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    for k in range(num_heads):
        wide = hidden * (k + 2)
        for j in range(num_layers):
            width = wide if j == 0 else hidden
            prefix = f"hydra_mlp.{k}.{2 * j + 1}"
            state[f"{prefix}.linear.weight"] = torch.randn(hidden, width, generator=gen) * 0.3
            state[f"{prefix}.linear.bias"] = torch.randn(hidden, generator=gen) * 0.3
            if j == 0:
                state[f"{prefix}.res_connection.weight"] = torch.randn(hidden, width,
                                                                       generator=gen) * 0.3
                state[f"{prefix}.res_connection.bias"] = torch.zeros(hidden)
        state[f"hydra_lm_head.{k}.1.weight"] = torch.randn(vocab, hidden, generator=gen)
        state[f"hydra_lm_head.{k}.1.bias"] = torch.zeros(vocab)
    folder.mkdir()
    torch.save(state, folder / "hydra_lm_head.pt")
    (folder / "config.json").write_text(json.dumps({
        "hydra_num_heads": num_heads, "hydra_num_layers": num_layers, "hydra_head_arch": arch,
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "grounded_heads": True,
        "hidden_state_offset": 0}))
    return folder


@pytest.mark.parametrize("arch", ["mlp", "prefix-mlp"])
def test_official_layout_loads_and_decodes_exactly(tiny_engine, tmp_path, arch):
    engine, tok = tiny_engine
    folder = official_checkpoint(tmp_path / "hydra", engine, arch=arch)
    method = METHODS["hydra"](engine, {2}, tok, heads=str(folder))
    assert len(method.heads) == 3 and method.heads.num_layers == 2
    assert (method.heads.prefix_embeding_layer is not None) == (arch == "prefix-mlp")
    assert method.parameter_overhead()["params"] > 3 * engine.config.vocab_size * 64
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[1]], [])
    assert method.generate(ids, 40).tokens == \
        METHODS["vanilla"](engine, {2}).generate(ids, 40).tokens


@pytest.mark.parametrize("break_it, message", [
    (lambda f: (f / "config.json").write_text(json.dumps({
        "hydra_num_heads": 3, "hydra_num_layers": 2, "hydra_head_arch": "cross-attn",
        "grounded_heads": True})), "'cross-attn' heads are not supported"),
    (lambda f: (f / "config.json").write_text(json.dumps({
        "hydra_num_heads": 3, "hydra_num_layers": 2, "hydra_head_arch": "prefix-mlp",
        "grounded_heads": True})), "missing keys.*prefix_embeding_layer"),
    (lambda f: (f / "hydra_lm_head.pt").unlink(), "no hydra_lm_head"),
    (lambda f: (f / "config.json").write_text(json.dumps({
        "hydra_num_heads": 4, "hydra_num_layers": 2})), "missing keys"),
    (lambda f: (f / "config.json").write_text("{"), "malformed JSON"),
])
def test_bad_folders_are_one_line_errors(tiny_engine, tmp_path, break_it, message):
    engine, _ = tiny_engine
    folder = official_checkpoint(tmp_path / "hydra", engine)
    break_it(folder)
    with pytest.raises(HydraError, match=message):
        load_hydra(folder, engine.config, engine.lm_head)


def test_trained_heads_load_back_and_predict_better_than_chance(tiny_engine, tmp_path,
                                                                counting_chats):
    engine, tok = tiny_engine
    metrics = train_hydra(engine, tok, [counting_chats], tmp_path / "heads", num_heads=2, steps=40,
                          lr=1e-2, batch_size=4, share_lm_head=True)
    assert metrics["top1_h1"] > 0.5              # "c" after "…a b": the path tells
    method = METHODS["hydra"](engine, {2}, tok, heads=str(tmp_path / "heads"))
    # Shared LM head: only the ResBlocks count, head k reading (k + 2) * 64 inputs through
    # its linear and its residual projection.
    assert len(method.heads) == 2
    assert method.parameter_overhead()["params"] == sum(2 * ((k + 2) * 64 * 64 + 64)
                                                        for k in range(2))
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["Count."], [])
    assert method.generate(ids, 30).tokens == \
        METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens


def test_trained_prefix_mlp_heads_load_back_and_decode_exactly(tiny_engine, tmp_path,
                                                               counting_chats):
    engine, tok = tiny_engine
    metrics = train_hydra(engine, tok, [counting_chats], tmp_path / "heads", num_heads=2,
                          steps=40, lr=1e-2, batch_size=4, share_lm_head=True,
                          arch="prefix-mlp")
    assert metrics["top1_h1"] > 0.5
    config = json.loads((tmp_path / "heads/config.json").read_text())
    assert config["hydra_head_arch"] == "prefix-mlp"
    method = METHODS["hydra"](engine, {2}, tok, heads=str(tmp_path / "heads"))
    layer = sum(p.numel() for p in method.heads.prefix_embeding_layer.parameters())
    assert method.parameter_overhead()["params"] == layer + sum(
        2 * ((k + 2) * 64 * 64 + 64) for k in range(2))
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["Count."], [])
    assert method.generate(ids, 30).tokens == \
        METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens


def test_unknown_arch_is_refused(tiny_engine, tmp_path, counting_chats):
    engine, tok = tiny_engine
    with pytest.raises(SpecbenchError, match="arch must be one of mlp, prefix-mlp"):
        train_hydra(engine, tok, [counting_chats], tmp_path / "h", arch="cross-attn")
