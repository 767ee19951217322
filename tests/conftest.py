"""Tiny random Llama-family models built in-process (no downloads), and the session's settings.

The session never touches the user's cache or inherits the user's knobs:
- `$SPECBENCH_HOME` is a temporary folder of its own, made before any test runs and removed
  after a passing session (a failing one prints and keeps it, with the choices it timed): the
  compiled kernels and every timed choice are made afresh, as on a new clone.
  `SPECBENCH_TEST_HOME=<folder>` uses that folder instead and keeps it: `.ci/run` passes its
  home so the real-model tests (`-m smollm2`, `-m sampling`, `-m ray`) reuse one download.
- Every inherited `SPECBENCH_*` variable is cleared (`SPECBENCH_KERNELS`, `SPECBENCH_FUSED`,
  `SPECBENCH_TRAIN_PRECISION`, …). A test that needs one sets it with `monkeypatch`.
- To force a kernel choice for the whole session (every test that does not pin its own):
  `SPECBENCH_TEST_<NAME>` becomes `SPECBENCH_<NAME>`, e.g. `SPECBENCH_TEST_KERNELS=aten|gemv|
  onednn`, `SPECBENCH_TEST_FUSED=on|off`, `SPECBENCH_TEST_AMX=on`. `tests/all_kernels.sh` runs
  the quick suite under each of them and under the timed choice.

Tests that compare two numeric paths either pin the kernels (or the dtype: `pinned_run`) they
compare, or take their tolerance from `tolerance(dtype, k, scale)` below, never from a constant
one kernel choice happens to meet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# (imports read no environment: the home and the knobs are read when a test runs)
from specbench_cli.engine.load import load_engine

_made_home: list[str] = []


def pytest_configure(config):
    inherited = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SPECBENCH_")}
    home = inherited.get("SPECBENCH_TEST_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
    else:
        home = tempfile.mkdtemp(prefix="specbench-test-home-")
        _made_home.append(home)
    os.environ["SPECBENCH_HOME"] = home
    for name, value in inherited.items():     # forced for the session: SPECBENCH_TEST_<NAME>
        if name.startswith("SPECBENCH_TEST_") and name != "SPECBENCH_TEST_HOME" and value:
            os.environ["SPECBENCH_" + name.removeprefix("SPECBENCH_TEST_")] = value


def pytest_report_header(config):
    forced = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("SPECBENCH_")]
    return "specbench: " + ", ".join(forced)


def pytest_sessionfinish(session, exitstatus):
    # A failed session keeps its home: the kernel, fused-step and dtype choices it timed
    # (kernels/*.json) are what a flaky comparison needs to be understood.
    for home in _made_home:
        if exitstatus in (0, 5):      # passed, or nothing collected
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"\nspecbench: the session's SPECBENCH_HOME is kept for inspection: {home}")


def tolerance(dtype: torch.dtype, k: int, scale: float = 1.0, depth: int = 1,
              c: float = 4.0) -> float:
    """How far apart two computations of the same values may be when only the order of their
    sums differs (another kernel, a joined block, cpu.c instead of torch): c * depth * eps(dtype)
    * sqrt(k) * scale. `k`: the longest reduction (a product's inner size); `scale`: the size of
    the values (the reference's largest magnitude); `depth`: the chained products each error
    passes through (a model's layers). Rounding errors of a sum grow as sqrt(k) in the run
    dtype's eps; c = 4 leaves a margin of 3x or more over the worst seen under random kernel
    plans (every kernel per product and block size, the fused step on or off), while a wrong
    layer, mask or weight is off by orders of magnitude more."""
    return c * depth * torch.finfo(dtype).eps * math.sqrt(k) * float(scale)


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, k: int, depth: int = 1,
                      dtype: torch.dtype | None = None, c: float = 4.0):
    """`got` equals `want` up to summation order: max |got - want| <= tolerance(dtype (default
    want's), k, max |want|, depth, c)."""
    dtype = dtype or want.dtype
    scale = want.detach().float().abs().max().item()
    tol = tolerance(dtype, k, scale, depth, c)
    diff = (got.detach().float() - want.detach().float()).abs().max().item()
    forced = ", ".join(f"{name}={value}" for name, value in os.environ.items()
                       if name in ("SPECBENCH_KERNELS", "SPECBENCH_FUSED", "SPECBENCH_AMX"))
    assert diff <= tol, (f"max |diff| {diff:.3g} > {tol:.3g} = {c} * {depth} layer(s) * "
                         f"eps({str(dtype).removeprefix('torch.')}) * sqrt({k}) * max|want| "
                         f"{scale:.3g} ({forced or 'timed kernel choice'})")


def model_sums(config) -> dict:
    """assert_sums_close's k and depth for a whole forward of a model with this config (the
    engine's EngineConfig or transformers')."""
    layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    return {"k": max(config.hidden_size, config.intermediate_size), "depth": layers}


# `specbench run`'s default `--dtype auto` times fp32 against bf16 on a CPU with bf16 units
# (AVX512-BF16, AMX) and takes the faster: a timing race, and in bf16 a method's answer may part
# from vanilla's at a near-tie. The tests compare answers exactly, so their runs pin fp32 unless
# they name a dtype (`test_profile` checks the timed choice itself).
PINNED_DTYPE = ("--dtype", "fp32")


def pinned_run(args) -> list[str]:
    """A command line for the CLI (strings), with `--dtype fp32` added to a `run` without one."""
    args = [str(a) for a in args]
    if args[:1] == ["run"] and not any(a == "--dtype" or a.startswith("--dtype=") for a in args):
        return [args[0], *PINNED_DTYPE, *args[1:]]
    return args


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
