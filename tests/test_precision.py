"""Training precision (train/precision.py): bf16 autocast only where a timed step says so."""

import pytest
import torch

from specbench_cli.engine import kernels
from specbench_cli.errors import SpecbenchError
from specbench_cli.train import precision


@pytest.fixture()
def bf16_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("SPECBENCH_TRAIN_PRECISION", raising=False)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def fake_timings(monkeypatch, ms: dict):
    calls = []

    def timed(step, name, device, repeats):
        calls.append(name)
        return ms[name] / 1e3
    monkeypatch.setattr(precision, "step_seconds", timed)
    return calls


def test_bf16_taken_only_when_clearly_faster_and_the_choice_is_cached(bf16_cpu, monkeypatch):
    calls = fake_timings(monkeypatch, {"fp32": 100.0, "bf16": 60.0})
    pick, why = precision.choose_precision("model a", lambda: None)
    assert pick == "bf16" and "fp32 100.0 ms, bf16 autocast 60.0 ms" in why
    assert calls == ["fp32", "bf16"]
    assert precision.choose_precision("model a", lambda: None)[0] == "bf16"
    assert calls == ["fp32", "bf16"]                      # cached: not timed again
    fake_timings(monkeypatch, {"fp32": 100.0, "bf16": 90.0})
    assert precision.choose_precision("model b", lambda: None)[0] == "fp32"   # 10% < 15%


def test_no_bf16_units_means_fp32_without_timing(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("SPECBENCH_TRAIN_PRECISION", raising=False)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    calls = fake_timings(monkeypatch, {"fp32": 100.0, "bf16": 10.0})
    assert precision.choose_precision("m", lambda: None) == \
        ("fp32", "fp32 (this CPU has no bf16 units)")
    assert calls == []


def test_forced_precision_and_a_bad_value(bf16_cpu, monkeypatch):
    monkeypatch.setenv("SPECBENCH_TRAIN_PRECISION", "bf16")
    assert precision.choose_precision("m", lambda: None)[0] == "bf16"
    monkeypatch.setenv("SPECBENCH_TRAIN_PRECISION", "fp16")
    with pytest.raises(SpecbenchError, match="choose auto, fp32 or bf16"):
        precision.choose_precision("m", lambda: None)


def test_autocast_runs_products_in_bf16_and_keeps_weights_fp32():
    layer = torch.nn.Linear(8, 4)
    with precision.autocast("bf16"):
        out = layer(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    with precision.autocast("fp32"):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
