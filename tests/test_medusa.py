"""Medusa: equality with vanilla over many trees, official heads, tree construction, bad input."""

import json

import pytest
import torch

from specbench_cli.methods import METHODS
from specbench_cli.drafters.medusa import (DEFAULT_ACCURACY, HeadsError, grow_tree, load_heads,
                                           load_tree)
from specbench_cli.bench.prompts import build_prompt_ids

from test_methods import PROMPTS, random_heads


@pytest.mark.parametrize("tree", ["budget16", "budget32", "budget64",
                                  [[0], [1], [0, 0], [0, 0, 0]], [[r] for r in range(10)]])
@pytest.mark.parametrize("seed", [0, 1])
def test_medusa_equals_vanilla_on_many_trees(tiny_engine, tree, seed):
    engine, tok = tiny_engine
    heads = random_heads(engine, num_heads=4, seed=seed)
    for text in PROMPTS[:3]:
        ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
        want = METHODS["vanilla"](engine, {2}).generate(ids, 48).tokens
        gen = METHODS["medusa"](engine, {2}, heads=heads, tree=tree).generate(ids, 48)
        assert gen.tokens == want
        assert sum(gen.accept_lengths) == len(gen.tokens)


def test_grow_tree_is_greedy_by_path_probability():
    acc = [[0.5, 0.2], [0.4, 0.1]]
    # values: (0,)=.5 (1,)=.2 (0,0)=.2 (0,1)=.05 (1,0)=.08
    assert grow_tree(acc, 4) == [(0,), (1,), (0, 0)]
    assert grow_tree(acc, 6) == [(0,), (1,), (0, 0), (0, 1), (1, 0)]
    tree = grow_tree(DEFAULT_ACCURACY, 64)
    assert len(tree) == 63 and all(c[:-1] in set(tree) | {()} for c in tree)


def official_heads(path, num_heads=5, hidden=64, vocab=96, drop=None):
    state = {}
    for h in range(num_heads):
        state[f"{h}.0.linear.weight"] = torch.randn(hidden, hidden).bfloat16()
        state[f"{h}.0.linear.bias"] = torch.randn(hidden).bfloat16()
        state[f"{h}.1.weight"] = torch.randn(vocab, hidden).bfloat16()
    state.pop(drop, None)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "medusa_lm_head.pt")
    # The official config miscounts: it says 2 heads where the file holds 5.
    (path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1,
                                                  "base_model_name_or_path": "tiny"}))
    return path


def test_official_heads_load_counting_tensors(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    folder = official_heads(tmp_path / "heads")
    heads = load_heads(folder, 64, 96)
    assert len(heads) == 5 and heads[0][1].weight.dtype == torch.float32
    m = METHODS["medusa"](engine, {2}, heads=str(folder), num_heads=4)
    assert len(m.heads) == 4
    assert m.parameter_overhead()["params"] == 4 * (64 * 64 + 64 + 96 * 64)
    ids = build_prompt_ids(tok, "vicuna_v1.1", [PROMPTS[0]], [])
    assert m.generate(ids, 30).tokens == METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens


def test_heads_for_another_model_fail_clearly(tmp_path):
    official_heads(tmp_path / "h", hidden=32)
    with pytest.raises(HeadsError, match=r"do not fit the model: tensor 0.0.linear.weight has "
                                         r"shape \(32, 32\), needs \(64, 64\)"):
        load_heads(tmp_path / "h", 64, 96)
    official_heads(tmp_path / "v", vocab=50)
    with pytest.raises(HeadsError, match=r"0.1.weight has shape \(50, 64\).*vocabulary 96"):
        load_heads(tmp_path / "v", 64, 96)
    official_heads(tmp_path / "m", drop="3.0.linear.bias")
    with pytest.raises(HeadsError, match=r"missing keys \['3.0.linear.bias'\]"):
        load_heads(tmp_path / "m", 64, 96)


def test_tree_files_and_their_errors(tiny_engine, tmp_path):
    good = tmp_path / "tree.yaml"
    good.write_text("- [0]\n- [1]\n- [0, 0]\n")
    assert load_tree(str(good), 2) == [(0,), (1,), (0, 0)]
    deep = tmp_path / "deep.json"
    deep.write_text("[[0], [0, 0], [0, 0, 0]]")
    with pytest.raises(HeadsError, match="is 3 deep but there are only 2 Medusa heads"):
        load_tree(str(deep), 2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"choices": [[0], ["x"]]}')
    with pytest.raises(HeadsError, match="expected a list of rank lists"):
        load_tree(str(bad), 2)
    broken = tmp_path / "broken.yaml"
    broken.write_text("[[0], [1")
    with pytest.raises(HeadsError, match="not JSON/YAML"):
        load_tree(str(broken), 2)
    with pytest.raises(HeadsError, match="not a preset"):
        load_tree("budget", 2)
    with pytest.raises(HeadsError, match="the root and at least one node"):
        load_tree("budget1", 2)
    assert len(load_tree("budget7", 2)) == 6       # any budgetN: N tokens, root included
    engine, _ = tiny_engine
    with pytest.raises(ValueError, match="the tree is 3 deep but there are only 2 heads"):
        METHODS["medusa"](engine, {2}, heads=random_heads(engine, 2), tree=[(0,), (0, 0), (0, 0, 0)])


def test_training_and_calibration(tiny_engine, tmp_path):
    from specbench_cli.train.medusa import calibrate, train_medusa
    engine, tok = tiny_engine
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"turns": [f"count {i}"], "answers": [
        f"{i} {i + 1} {i + 2} and so on"]}) + "\n" for i in range(20)))
    first = train_medusa(engine, tok, [data], tmp_path / "h1", num_heads=2, steps=1, batch_size=4)
    last = train_medusa(engine, tok, [data], tmp_path / "h2", num_heads=2, steps=30, lr=3e-3,
                        batch_size=4)
    assert last["loss"] < first["loss"]
    heads = load_heads(tmp_path / "h2", 64, 96)
    assert len(heads) == 2
    result = calibrate(engine, tok, heads, [data], tmp_path / "h2")
    acc = result["accuracy"]
    assert len(acc) == 2 and all(len(a) == 10 and sum(a) <= 1.0 + 1e-6 for a in acc)
    m = METHODS["medusa"](engine, {2}, heads=str(tmp_path / "h2"), tree="budget16")
    assert [tuple(c) for c in m.tree.choices[1:]] == result["trees"]["16"]
    assert m.info() == {"heads": 2, "tree_tokens": 16, "tree_depth": m.tree.depth}
