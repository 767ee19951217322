"""`specbench prepare` and the default `specbench run` on a shrunken built-in recipe."""

import functools
import json

import pytest
from typer.testing import CliRunner

from specbench_cli.models import prepare as prepare_module
from specbench_cli.models.builtin import tiny_recipe
from specbench_cli.cli import app
from specbench_cli.methods import METHODS

from conftest import pinned_run

SMALL_ADDONS = {"kangaroo": {"exit_layer": 1, "steps": 5, "batch_size": 4},
                "medusa": {"num_heads": 2, "steps": 5, "batch_size": 4},
                "rest": {},
                "sps": {"steps": 5, "batch_size": 4, "hidden_size": 32},
                "eagle": {"steps": 5, "batch_size": 4},
                "eagle3": {"steps": 5, "batch_size": 4, "draft_vocab": 64, "ttt": 2},
                "hydra": {"num_heads": 2, "steps": 5, "batch_size": 4}}
SMALL_TEACHER = {"conversations": 40, "top_k": 8, "max_len": 128}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture()
def tiny_prepare(monkeypatch, home):
    small = functools.partial(prepare_module.prepare_all, home=home, recipe=tiny_recipe(),
                              addons=SMALL_ADDONS, teacher=SMALL_TEACHER)
    monkeypatch.setattr(prepare_module, "prepare_all", lambda **kw: small(
        **{k: v for k, v in kw.items() if k != "home"}))
    return small


def test_prepare_builds_addons_once_and_reuses_them(tiny_prepare):
    first = tiny_prepare()
    assert set(first.addons) == {n for n, m in METHODS.items() if m.builtin_addon}
    assert set(first.addons) >= {"kangaroo", "medusa", "rest", "sps"}
    assert (first.addons["medusa"] / "calibration.json").exists()
    assert (first.addons["rest"] / "manifest.json").exists()
    again = tiny_prepare()
    assert list(again.timings) == ["base"]            # nothing rebuilt
    assert again.method_defaults()["kangaroo"]["adapter"] == str(first.addons["kangaroo"])
    changed = {**SMALL_ADDONS, "medusa": {**SMALL_ADDONS["medusa"], "steps": 6}}
    assert list(tiny_prepare(addons=changed).timings) == ["base", "teacher", "medusa"]  # settings
    assert list(tiny_prepare(addons=changed).timings) == ["base"]
    assert list(tiny_prepare().timings) == ["base", "teacher", "medusa"]      # and back
    # One teacher pass feeds every add-on that reads the target; REST reads only the corpus.
    other = {**SMALL_TEACHER, "top_k": 4}
    assert list(tiny_prepare(teacher=other).timings) == ["base", "teacher", "kangaroo", "medusa",
                                                         "sps", "eagle", "eagle3", "hydra"]


def test_default_run_uses_the_builtin_benchmark_and_every_method(tiny_prepare, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, pinned_run(["run", "--max-new-tokens", 16, "--warmup", 0,
                                                 "--limit", 2, "--out", out]))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["bench"] == "builtin"
    assert meta["config"]["methods"] == list(METHODS)      # every registered method
    assert meta["methods"]["medusa"]["options"]["tree"] == "budget16"
    assert meta["methods"]["rest"]["options"]["num_draft"] == 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subtasks"] == ["mt_bench", "translation", "summarization", "qa",
                                   "math_reasoning", "rag"]
    for name, m in summary["methods"].items():
        assert m["questions"] == 12
        assert m["equal_to_vanilla"]["share"] == 1.0, name
