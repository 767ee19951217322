"""Static-shape decoding behind --compile (engine/static.py): the same tokens as eager decoding."""

import pytest
import torch

from specbench_cli.engine.load import load_engine
from specbench_cli.engine.static import BACKEND_ENV, bucket_of
from specbench_cli.methods import METHODS
from test_methods import PROMPTS, make


@pytest.fixture(scope="module")
def compiled(tiny_model_dir):
    """The tiny model compiled with aot_eager: the static shapes, padding, masks and index writes
    are traced and checked, without inductor's code generation (seconds instead of minutes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BACKEND_ENV, "aot_eager")
        engine, tok, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                                     compile=True)
    return engine, tok


def test_blocks_are_padded_to_a_few_buckets():
    assert [bucket_of(n) for n in (1, 2, 3, 5, 9, 17, 100)] == [1, 2, 4, 8, 16, 32, 128]


@pytest.mark.parametrize("text", PROMPTS[:2])
def test_every_method_compiled_equals_eager(tiny_engine, compiled, text):
    from specbench_cli.bench.prompts import build_prompt_ids
    eager, tok = tiny_engine
    engine, _ = compiled
    assert engine.static is not None and engine.fused is None
    ids = build_prompt_ids(tok, "vicuna_v1.1", [text], [])
    with torch.inference_mode():
        for name in METHODS:
            want = make(name, eager, {2}, tok).generate(ids, 40).tokens
            got = make(name, engine, {2}, tok).generate(ids, 40).tokens
            assert got == want, name
    # a handful of shapes served every method's forwards
    assert {size for _, _, size in engine.static.shapes} <= {1, 2, 4, 8, 16, 32, 64, 128}


def test_a_block_past_the_last_bucket_or_the_capacity_runs_eagerly(compiled):
    engine, _ = compiled
    cache = engine.new_cache(140)
    assert not engine.static.takes(3, 0, cache)             # autograd on (training)
    with torch.inference_mode():
        assert not engine.static.takes(129, 0, cache)      # prefill of 129 tokens
        assert not engine.static.takes(3, 137, cache)      # 137 + 4 padded rows > 140
        assert engine.static.takes(3, 136, cache)


def test_run_compile_flag_reaches_the_engine_and_run_json(tiny_model_dir, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from conftest import pinned_run, write_questions
    from specbench_cli.cli import app
    monkeypatch.setenv(BACKEND_ENV, "aot_eager")
    qfile = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "summarization",
         "turns": ["Summarize: the cat sat on the mat. the cat sat on the mat again."]}])
    out = tmp_path / "run"
    result = CliRunner().invoke(app, pinned_run((
        "run", "--model", tiny_model_dir, "--bench", qfile, "--methods", "pld",
        "--max-new-tokens", 24, "--warmup", 0, "--compile", "--out", out)))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["compile"] is True
    assert meta["kernels"]["decoder layers"].startswith("torch modules, --compile")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["pld"]["equal_to_vanilla"]["share"] == 1.0
