"""Checkpoint loading: every layout `from_pretrained` reads gives transformers' own logits, the
run dtype is a cast of the stored weights, nothing stays on the meta device, and checkpoints
that do not fit the config fail with one clear line."""

import json
import struct
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from specbench_cli.engine.llama import EngineConfig
from specbench_cli.errors import ModelLoadError
from specbench_cli.engine.load import (DTYPE_NAMES, checkpoint_files, load_engine,
                                       resolve_dtype)

from conftest import assert_sums_close, hf_config, model_sums
CPU = torch.device("cpu")


def hf_model(variant="llama", seed=0, **overrides):
    """A tiny random transformers model with sharpened weights (as conftest's folders have)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(variant, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


def engine_of(folder, dtype="fp32", **kwargs):
    return load_engine(str(folder), dtype=dtype, device="cpu", with_tokenizer=False, **kwargs)[0]


def assert_same_logits(engine, ref):
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (1, 24))
    with torch.no_grad():
        got = engine(ids, engine.cache(64), 0)
        want = ref(ids).logits.float()
    assert_sums_close(got, want, **model_sums(engine.config))


def assert_loaded(engine):
    assert not [n for n, p in engine.named_parameters() if p.is_meta]
    assert not [n for n, p in engine.named_parameters() if p.requires_grad]
    if engine.config.tie_word_embeddings:
        assert engine.lm_head.weight is engine.model.embed_tokens.weight


def write_config(model, folder):
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    return folder


def state_of(model) -> dict[str, torch.Tensor]:
    """The checkpoint HF would write: tied heads left out, contiguous copies."""
    tied = model.config.tie_word_embeddings
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")}


def write_safetensors_by_hand(path, tensors, misalign=False):
    """The format written directly; with `misalign`, the header is padded so that the data
    starts at an odd offset, which no dtype is aligned to."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        blob = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": {torch.float32: "F32", torch.float16: "F16",
                                  torch.bfloat16: "BF16", torch.int64: "I64"}[t.dtype],
                        "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    if misalign:
        head += b" " * ((1 - 8 - len(head)) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


# Layouts -------------------------------------------------------------------------------------

def test_sharded_safetensors_with_index(tmp_path):
    model = hf_model("gqa")
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    # Other weights in the folder are not the model's: only the index's files are read.
    save_file({"junk": torch.zeros(3)}, str(tmp_path / "medusa_lm_head.safetensors"))
    save_file({"junk": torch.zeros(3)}, str(tmp_path / "consolidated.safetensors"))
    assert [f.name for f in checkpoint_files(tmp_path)] == shards
    engine = engine_of(tmp_path)
    assert_loaded(engine)
    assert_same_logits(engine, model)


@pytest.mark.parametrize("with_head", [False, True])
def test_tied_embeddings_with_or_without_a_stored_head(tmp_path, with_head):
    model = hf_model("llama3_rope")          # tie_word_embeddings=True
    state = state_of(model)
    assert "lm_head.weight" not in state
    if with_head:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(write_config(model, tmp_path) / "model.safetensors"))
    engine = engine_of(tmp_path)
    assert_loaded(engine)
    assert engine.num_parameters() == sum(p.numel() for p in model.parameters())
    assert_same_logits(engine, model)


@pytest.mark.parametrize("stored, run", [(torch.bfloat16, "fp32"), (torch.float32, "bf16"),
                                         (torch.float16, "float32"), (torch.float16, "half")])
def test_run_dtype_is_a_cast_of_the_stored_weights(tmp_path, stored, run):
    model = hf_model("qkv_bias").to(stored)
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    run_dtype = resolve_dtype(run, CPU)
    engine = engine_of(tmp_path, run)
    assert_loaded(engine)
    want = state_of(model)
    got = engine.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == run_dtype
        assert torch.equal(got[name], tensor.to(run_dtype)), name


@pytest.mark.parametrize("sharded", [False, True])
def test_pytorch_bin(tmp_path, sharded):
    model = hf_model("gqa")
    state = state_of(model)
    write_config(model, tmp_path)
    if sharded:
        names = list(state)
        parts = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
                 "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
        for file, keys in parts.items():
            torch.save({k: state[k] for k in keys}, tmp_path / file)
        weight_map = {k: file for file, keys in parts.items() for k in keys}
        (tmp_path / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    for dtype, mmap in (("fp32", True), ("fp32", False), ("bf16", True)):
        engine = engine_of(tmp_path, dtype, mmap=mmap)
        assert_loaded(engine)
        if dtype == "fp32":
            assert_same_logits(engine, model)
        else:
            assert torch.equal(engine.model.norm.weight, state["model.norm.weight"].bfloat16())


def mapped_from(address: int) -> str:
    """The file (or "") whose mapping holds this address in our process."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else ""
    return ""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_same_dtype_weights_are_mapped_unless_copying_is_asked(tiny_model_dir):
    weights = str((tiny_model_dir / "model.safetensors").resolve())
    # (pack=False: as loaded, before engine/arena.py moves every weight into one buffer)
    mapped = engine_of(tiny_model_dir, pack=False)
    copied = engine_of(tiny_model_dir, mmap=False, pack=False)
    converted = engine_of(tiny_model_dir, "bf16", pack=False)
    assert_loaded(copied)
    for engine, is_mapped in ((mapped, True), (copied, False), (converted, False)):
        for name, p in engine.named_parameters():
            # q/k/v and gate/up are views of their fused product's weight (a copy, so never
            # mapped); every weight keeps Hugging Face's layout.
            fused = name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                   "gate_proj.weight", "up_proj.weight"))
            assert (mapped_from(p.data_ptr()) == weights) is (is_mapped and not fused), name
            assert p.is_contiguous(), name
    for (name, a), (_, b) in zip(mapped.state_dict().items(), copied.state_dict().items()):
        assert torch.equal(a, b), name


def test_misaligned_data_and_fallback_file_name(tmp_path):
    """A hand-written file whose fp32 data starts at an odd offset (loaded by copying, never
    mapped misaligned), under a name none of from_pretrained's: the folder's only safetensors."""
    model = hf_model("llama")
    write_safetensors_by_hand(write_config(model, tmp_path) / "weights.safetensors",
                              state_of(model), misalign=True)
    engine = engine_of(tmp_path)
    assert all(p.data_ptr() % 4 == 0 for p in engine.parameters())
    assert_same_logits(engine, model)


def test_rotary_buffers_in_a_checkpoint_are_ignored(tmp_path):
    model = hf_model("llama")
    state = state_of(model)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, str(write_config(model, tmp_path) / "model.safetensors"))
    assert_same_logits(engine_of(tmp_path), model)


def test_engine_built_without_the_loader_still_initialises_on_cpu():
    from specbench_cli.engine.llama import Engine
    cfg = EngineConfig.from_hf(hf_config("llama").to_dict())
    engine = Engine(cfg)
    assert engine.inv_freq.device.type == "cpu"
    assert engine.model.embed_tokens.weight.std() > 0      # nn.init is left as it was
    with torch.device("meta"):
        assert Engine(cfg).inv_freq.device.type == "cpu"


def test_max_position_embeddings_is_read():
    assert EngineConfig.from_hf(hf_config("llama").to_dict()).max_position_embeddings == 4096
    cfg = hf_config("llama").to_dict()
    del cfg["max_position_embeddings"]
    assert EngineConfig.from_hf(cfg).max_position_embeddings is None


# Checkpoints that do not fit ------------------------------------------------------------------

def broken_folder(tmp_path, change):
    model = hf_model("llama")
    state = state_of(model)
    change(state)
    save_file(state, str(write_config(model, tmp_path) / "model.safetensors"))
    return tmp_path


def one_line_error(folder) -> str:
    with pytest.raises(ModelLoadError) as err:
        engine_of(folder)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_tensor_is_named(tmp_path):
    folder = broken_folder(tmp_path, lambda s: s.pop("model.layers.2.mlp.up_proj.weight"))
    message = one_line_error(folder)
    assert "missing keys ['model.layers.2.mlp.up_proj.weight']" in message
    assert "unexpected keys none" in message


def test_untied_head_missing_is_named(tmp_path):
    folder = broken_folder(tmp_path, lambda s: s.pop("lm_head.weight"))
    assert "missing keys ['lm_head.weight']" in one_line_error(folder)


def test_unexpected_tensors_are_named_up_to_five(tmp_path):
    def add(state):
        for i in range(7):
            state[f"model.extra{i}.weight"] = torch.zeros(2)
        state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)   # config: no bias
    message = one_line_error(broken_folder(tmp_path, add))
    assert "missing keys none" in message
    assert "unexpected keys ['model.extra0.weight'" in message
    assert message.count("'model.extra") + message.count("q_proj.bias") == 5


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    def widen(state):
        state["model.layers.1.mlp.gate_proj.weight"] = torch.zeros(130, 64)
    message = one_line_error(broken_folder(tmp_path, widen))
    assert "model.layers.1.mlp.gate_proj.weight" in message
    assert "(130, 64)" in message and "(128, 64)" in message


def test_unsupported_stored_dtype_is_refused(tmp_path):
    model = hf_model("llama")
    state = state_of(model)
    state["model.norm.weight"] = torch.ones(64, dtype=torch.int64)
    write_safetensors_by_hand(write_config(model, tmp_path) / "model.safetensors", state)
    message = one_line_error(tmp_path)
    assert "model.norm.weight" in message and "I64" in message


def test_truncated_and_garbled_files_are_refused(tmp_path):
    folder = broken_folder(tmp_path, lambda s: None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    # found from the header alone, before any tensor is read
    assert (f"truncated: its header describes {len(data)} bytes, the file has {len(data) - 100}"
            in one_line_error(folder))
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    assert "not a safetensors file" in one_line_error(folder)


def test_index_naming_an_absent_file(tmp_path):
    model = hf_model("llama")
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    shards[-1].unlink()
    assert shards[-1].name in one_line_error(tmp_path)


def test_no_weights_at_all(tmp_path):
    write_config(hf_model("llama"), tmp_path)
    assert "no *.safetensors" in one_line_error(tmp_path)


# dtype names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype", [
    ("fp32", torch.float32), ("float32", torch.float32), ("FP32", torch.float32),
    ("fp16", torch.float16), ("float16", torch.float16), ("half", torch.float16),
    ("Half", torch.float16), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("BFloat16", torch.bfloat16)])
def test_dtype_aliases(name, dtype):
    assert resolve_dtype(name, CPU) is dtype
    assert DTYPE_NAMES[dtype] in ("fp32", "fp16", "bf16")    # what run.json records


def test_dtype_defaults_and_refusal():
    assert resolve_dtype(None, CPU) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    with pytest.raises(ModelLoadError) as err:
        resolve_dtype("float64", CPU)
    for name in ("fp32", "fp16", "bf16", "float32", "float16", "half", "bfloat16"):
        assert name in str(err.value)


def test_safetensors_round_trip_helper_matches_the_library(tmp_path):
    """The hand-written files above are real safetensors files."""
    tensors = {"a": torch.arange(6, dtype=torch.float32).view(2, 3),
               "b": torch.ones(5, dtype=torch.bfloat16)}
    write_safetensors_by_hand(tmp_path / "x.safetensors", tensors, misalign=True)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
