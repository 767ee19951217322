"""Tiny random Llama-family models built in-process (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specbench_cli.engine.load import load_engine

OFFICIAL_QUESTIONS = Path(__file__).resolve().parents[2] / "shared/data/spec_bench/question.jsonl"

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

VARIANTS = {
    "llama": ("llama", {}),
    "gqa": ("mistral", {"num_key_value_heads": 2}),
    "qkv_bias": ("qwen2", {"num_key_value_heads": 2}),
    "llama3_rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 64},
                              "tie_word_embeddings": True}),
}


def hf_config(variant: str, **overrides):
    from transformers import AutoConfig
    model_type, extra = VARIANTS[variant]
    return AutoConfig.for_model(model_type, **{**TINY, **extra, **overrides})


def make_char_tokenizer(folder: Path):
    """A byte-level word-piece-free tokenizer over printable ASCII: every character one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(chars[:TINY["vocab_size"] - 3])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)


def make_model_folder(folder: Path, variant: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a random tiny model of the variant with a character tokenizer, as HF would."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(variant, **overrides))
    # Random init with std 0.02 gives near-uniform logits; sharpen them so greedy text has
    # structure (repeats, n-grams) the way a trained model's does.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(folder)
    make_char_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    engine, tokenizer, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu")
    return engine, tokenizer


@pytest.fixture()
def counting_chats(tmp_path) -> Path:
    """Eight identical chats whose answer repeats "abc": a trainer learns it in a few steps."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"conversations": [
        {"from": "human", "value": "Count."}, {"from": "gpt", "value": "abcabcabcabc"}]}) + "\n"
        for _ in range(8)))
    return data


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_length_and_eos_edges(make, engine, prompt_ids):
    """`make(eos_ids)` builds a method; its answers must stop exactly at max_new_tokens and right
    after the first EOS, as vanilla's do."""
    from specbench_cli.methods import METHODS
    full = METHODS["vanilla"](engine, set()).generate(prompt_ids, 30).tokens
    for n in (1, 2, 5, 7):
        gen = make(set()).generate(prompt_ids, n)
        assert gen.tokens == full[:n] and sum(gen.accept_lengths) == n
    for k in (0, 3, 6):      # pretend the k-th generated token is EOS: stop right after it
        gen = make({full[k]}).generate(prompt_ids, 30)
        assert gen.tokens == full[:full.index(full[k]) + 1]
