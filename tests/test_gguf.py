"""GGUF files (llama.cpp) convert once into a cached HF folder that the engine loads exactly.

The files are written here with the `gguf` package, the way llama.cpp's convert script writes
them: its tensor names, its q/k row permutation for llama, F32 tensors, a byte-level BPE tokenizer
and a chat template in the metadata. So the tests need no download.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from specbench_cli.engine import gguf as gguf_mod
from specbench_cli.engine.gguf import INSTALL_HINT, MARKER, gguf_folder
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import ModelLoadError

from conftest import assert_sums_close, hf_config, model_sums, pinned_run

# Writing and converting files needs the optional extra; the bad-input tests run without it.
needs_gguf = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("gguf", "accelerate")),
    reason="needs the optional 'gguf' and 'accelerate' packages")

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("Ġt", "h")]
# llama: tied embeddings (no `output` tensor), like SmolLM2; qwen2: q/k/v biases, own lm_head.
ARCHS = {"llama": ("llama", {"tie_word_embeddings": True}), "qwen2": ("qkv_bias", {})}


def byte_level_vocab() -> tuple[list[str], list[int]]:
    """GPT-2's byte alphabet, the merged tokens, then the control tokens (type 3)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tokens = list(bytes_to_unicode().values()) + ["".join(m) for m in MERGES] + SPECIALS
    return tokens, [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert script reorders q/k rows (rotary halves → interleaved pairs);
    transformers undoes this on load, so a file must be written with it applied."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, arch: str, seed: int = 0):
    """Write a tiny random model of `arch` as a GGUF file; return the original transformers model."""
    from gguf import GGUFWriter
    from transformers import AutoModelForCausalLM
    tokens, types = byte_level_vocab()
    variant, extra = ARCHS[arch]
    cfg = hf_config(variant, vocab_size=len(tokens), num_hidden_layers=2, num_key_value_heads=2,
                    bos_token_id=tokens.index("<|im_start|>"), eos_token_id=tokens.index("<|im_end|>"),
                    **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # sharpen (as conftest does); random biases and norms, so errors show
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(8.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(1.0, 0.1)
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for key, t in model.state_dict().items():
        if key == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif key == "model.norm.weight":
            gname = "output_norm.weight"
        elif key == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue  # llama.cpp writes no `output` for tied embeddings
            gname = "output.weight"
        else:
            layer, rest = key.split(".", 3)[2:]  # model.layers.N.<module>.<leaf>
            module, leaf = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{names[module]}.{leaf}"
            if arch == "llama" and module == "self_attn.q_proj":
                t = llama_cpp_permute(t, cfg.num_attention_heads)
            elif arch == "llama" and module == "self_attn.k_proj":
                t = llama_cpp_permute(t, cfg.num_key_value_heads)
        w.add_tensor(gname, t.float().contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module", params=list(ARCHS))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"gguf_{request.param}")
    file = root / "files" / f"tiny-{request.param}.gguf"
    file.parent.mkdir()
    model = write_gguf(file, request.param)
    return request.param, file, model, gguf_folder(file, home=root / "home"), root / "home"


@needs_gguf
def test_engine_matches_original_model(converted):
    """Names, the llama q/k permutation, qwen2's biases and tied/untied heads all round-trip."""
    arch, file, model, folder, home = converted
    assert folder.parent == home / "gguf" and len(folder.name) == 16
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    engine, tokenizer, _ = load_engine(str(folder), dtype="fp32", device="cpu")
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, 24))
    with torch.no_grad():
        want = model(ids).logits
        got = engine(ids, engine.cache(64), 0)
    assert want.abs().max() > 1.0  # logits with structure, not near-uniform noise
    assert_sums_close(got, want, **model_sums(engine.config))


@needs_gguf
def test_tokenizer_round_trips_with_chat_template(converted):
    from transformers import AutoTokenizer
    arch, file, model, folder, home = converted
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    text = "the thin herder<|im_end|> ok"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert ours.decode(ours(text)["input_ids"]) == text
    assert ours.convert_tokens_to_ids("<|im_end|>") in ours(text)["input_ids"]  # kept whole
    assert ours.chat_template == CHAT_TEMPLATE
    chat = ours.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@needs_gguf
def test_second_call_reuses_cache(converted, monkeypatch):
    arch, file, model, folder, home = converted
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: pytest.fail("converted again"))
    assert gguf_folder(file, home=home) == folder
    copy = file.parent / "renamed.gguf"  # the key is the content, not the name
    copy.write_bytes(file.read_bytes())
    assert gguf_folder(copy, home=home) == folder


@needs_gguf
def test_interrupted_conversion_is_not_taken_as_done(tmp_path, monkeypatch):
    file = tmp_path / "m.gguf"
    write_gguf(file, "qwen2", seed=3)
    real = gguf_mod._convert

    def half_then_crash(path, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_mod, "_convert", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        gguf_folder(file, home=tmp_path / "home")
    assert list((tmp_path / "home" / "gguf").iterdir()) == []  # no folder, no temp left behind
    monkeypatch.setattr(gguf_mod, "_convert", real)
    folder = gguf_folder(file, home=tmp_path / "home")
    assert (folder / MARKER).is_file() and (folder / "config.json").read_text() != "{}"


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        gguf_folder(tmp_path / "nope.gguf", home=tmp_path)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        gguf_folder(bad, home=tmp_path)


@needs_gguf
def test_missing_gguf_package_gives_install_hint(tmp_path, monkeypatch):
    file = tmp_path / "m.gguf"
    write_gguf(file, "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ModelLoadError) as err:
        gguf_folder(file, home=tmp_path / "home")
    assert str(err.value) == INSTALL_HINT


@needs_gguf
def test_unsupported_architecture_is_one_line(tmp_path):
    from gguf import GGUFWriter
    file = tmp_path / "odd.gguf"
    w = GGUFWriter(str(file), "notanarch")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="cannot convert") as err:
        gguf_folder(file, home=tmp_path / "home")
    assert "\n" not in str(err.value)


@needs_gguf
def test_cli_takes_a_gguf_file_for_run_and_datastore(tmp_path, monkeypatch):
    """`--model file.gguf` and `datastore build --tokenizer file.gguf`, through the command line:
    converted once under $SPECBENCH_HOME, then a run whose methods equal vanilla."""
    import json

    from typer.testing import CliRunner

    from specbench_cli.cli import app
    from conftest import write_questions
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path / "home"))
    file = tmp_path / "tiny.gguf"
    write_gguf(file, "llama")
    qfile = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "qa", "turns": ["the theme is the thing"]}])
    out = tmp_path / "run"
    result = CliRunner().invoke(app, pinned_run(["run", "--model", file, "--bench", qfile,
                                                 "--max-new-tokens", 12, "--warmup", 0,
                                                 "--out", out]))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["model"] == str(file) and meta["config"]["template"] == "chat"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["pld"]["equal_to_vanilla"]["share"] == 1.0
    assert len(list((tmp_path / "home" / "gguf").iterdir())) == 1          # converted once
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "the theme is the thing there"}) + "\n")
    store = CliRunner().invoke(app, ["datastore", "build", "--tokenizer", str(file), "--data",
                                     str(corpus), "--out", str(tmp_path / "ds")])
    assert store.exit_code == 0, store.output
    assert "tokens" in store.output
