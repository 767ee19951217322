"""Kangaroo: adapter checkpoints (ours and the official layout), training, bad input."""

import json

import pytest
import torch

from specbench_cli.methods import METHODS
from specbench_cli.drafters.kangaroo import Adapter, AdapterError, default_exit_layer, load_adapter
from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.train.kangaroo import train_kangaroo

OFFICIAL_KEYS = ["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
                 "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
                 "layers.0.input_layernorm.weight", "norm.weight"]


def official_checkpoint(folder, hidden=64, vocab=96, drop=None, bad_shape=None):
    """The official layout: a one-layer LlamaConfig and pytorch_model.bin with these keys."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shapes = {k: (hidden, hidden) for k in OFFICIAL_KEYS[:4]}
    shapes.update({OFFICIAL_KEYS[4]: (hidden,), OFFICIAL_KEYS[5]: (hidden,)})
    if bad_shape:
        shapes[bad_shape] = (hidden, hidden // 2)
    state = {k: torch.randn(s) * 0.05 for k, s in shapes.items() if k != drop}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": vocab,
        "intermediate_size": 128, "rms_norm_eps": 1e-6}))
    return folder


def test_default_exit_layer_follows_the_paper():
    assert [default_exit_layer(n) for n in (4, 8, 32, 40)] == [1, 1, 2, 3]


def test_official_checkpoint_loads_strictly(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    folder = official_checkpoint(tmp_path / "official")
    adapter, _ = load_adapter(folder, engine.config)
    want = torch.load(folder / "pytorch_model.bin")
    assert sorted(adapter.state_dict()) == sorted(OFFICIAL_KEYS)
    for k, v in want.items():
        assert torch.equal(adapter.state_dict()[k], v)
    # 4·H² + 2·H, the formula behind Vicuna-7B's 67,117,056
    assert adapter.num_parameters() == 4 * 64 * 64 + 2 * 64
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["hello there, hello there"], [])
    k = METHODS["kangaroo"](engine, {2}, adapter=str(folder), exit_layer=2)
    assert k.generate(ids, 30).tokens == METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "norm.weight"}, "missing keys ['norm.weight']"),
    ({"bad_shape": "layers.0.self_attn.k_proj.weight"},
     "tensor layers.0.self_attn.k_proj.weight has shape (64, 32), needs (64, 64)"),
    ({"hidden": 32}, "made for another model: hidden_size 32, the target has 64"),
    ({"vocab": 32000}, "made for another model: vocab_size 32000, the target has 96"),
])
def test_corrupt_or_foreign_checkpoints_fail_clearly(tiny_engine, tmp_path, kwargs, message):
    folder = official_checkpoint(tmp_path / "bad", **kwargs)
    with pytest.raises(AdapterError) as err:
        load_adapter(folder, tiny_engine[0].config)
    assert message in str(err.value)


def test_adapter_for_another_layer_count_is_refused(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    folder = official_checkpoint(tmp_path / "ours")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["specbench"] = {"target_num_layers": 32, "exit_layer": 2}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="trained on a 32-layer model; the target has 4"):
        load_adapter(folder, engine.config)


@pytest.mark.parametrize("options, message", [
    ({"exit_layer": 4}, "exit layer must be in [1, 3] for this 4-layer model (got 4)"),
    ({"threshold": 1.5}, "kangaroo.threshold: must be in [0.0, 1.0] (got 1.5)"),
    ({"adapter": None}, "kangaroo needs an adapter"),
])
def test_bad_options(tiny_engine, options, message):
    engine, _ = tiny_engine
    with pytest.raises(ValueError) as err:
        METHODS["kangaroo"](engine, {2}, **{"adapter": Adapter(engine.config), **options})
    assert message in str(err.value)


def test_training_lowers_the_loss_saves_and_resumes(tiny_engine, tmp_path):
    engine, tok = tiny_engine
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"conversations": [
        {"from": "human", "value": f"count {i}"},
        {"from": "gpt", "value": f"{i} {i + 1} {i + 2} and so on"}]}) + "\n" for i in range(20)))
    out = tmp_path / "adapter"
    first = train_kangaroo(engine, tok, [data], out, exit_layer=1, steps=2, lr=1e-3, batch_size=4)
    last = train_kangaroo(engine, tok, [data], tmp_path / "adapter2", exit_layer=1, steps=40,
                          lr=1e-3, batch_size=4)
    assert last["loss"] < first["loss"]
    adapter, cfg = load_adapter(tmp_path / "adapter2", engine.config)
    assert cfg["specbench"]["exit_layer"] == 1 and len(cfg["specbench"]["data_sha256"]) == 64
    assert not (tmp_path / "adapter2" / "checkpoint.pt").exists()
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["count 3"], [])
    k = METHODS["kangaroo"](engine, {2}, adapter=adapter, exit_layer=1)
    assert k.generate(ids, 30).tokens == METHODS["vanilla"](engine, {2}).generate(ids, 30).tokens
