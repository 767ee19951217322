"""Sharded runs on Ray (`--workers`): a local cluster of 2 CPU workers and a tiny model.

The tests marked `ray` start Ray (~10 s) and run in .ci/run; the others need no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import pinned_run, write_questions
from specbench_cli import api
from specbench_cli.cli import app
from test_cli import QUESTIONS

METHODS = "vanilla,pld,lookahead"


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def plan(model, qfile, out, resume=False):
    # fp32: `auto` times fp32 against bf16 in each process (a 1-thread worker's choice is its own)
    return api.plan_run(model=str(model), bench=str(qfile), methods=METHODS, max_new_tokens=24,
                        repeats=2, warmup=1, dtype="fp32", out=out, resume=resume,
                        console=quiet())


def answers_of(out: Path) -> Counter:
    """(method, question, repeat, token ids) of every answer line, counted: a lost answer is
    missing, a duplicated one counts 2."""
    found = Counter()
    for path in sorted((out / "answers").glob("*.jsonl")):
        for text in path.read_text().splitlines():
            row = json.loads(text)
            found[(row["method"], row["question_id"], row["repeat"],
                   json.dumps(row["token_ids"]))] += 1
    return found


@pytest.fixture(scope="module", autouse=True)
def one_kernel():
    """Every process of these tests (this one, the Ray workers, the CLI's) runs aten's products.
    Chosen by measurement, a 1-thread worker and this 2-thread process may pick different
    kernels, whose summation orders can move a near-tie of the random tiny model (seen in CI:
    one lookahead answer parted at a repeated token): equality here is about sharding."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECBENCH_KERNELS", "aten")
        yield


@pytest.fixture(scope="module")
def qfile(tmp_path_factory):
    return write_questions(tmp_path_factory.mktemp("ray") / "q.jsonl", QUESTIONS)


@pytest.fixture(scope="module")
def single(tiny_model_dir, qfile, tmp_path_factory) -> Counter:
    """The reference: the same run in this process."""
    out = api.execute(plan(tiny_model_dir, qfile, tmp_path_factory.mktemp("single") / "run"),
                      quiet())
    found = answers_of(out)
    assert sum(found.values()) == 3 * len(QUESTIONS) * 2 and set(found.values()) == {1}
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"SPECBENCH_KERNELS": "aten"}})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_sharded_answers_equal_a_single_process_run(ray_cluster, tiny_model_dir, qfile, single,
                                                    tmp_path):
    from specbench_cli.run.distributed import execute_sharded
    out = execute_sharded(plan(tiny_model_dir, qfile, tmp_path / "run"), 2, console=quiet())
    assert answers_of(out) == single
    meta = json.loads((out / "run.json").read_text())
    assert set(meta["workers"]) == {"w0", "w1"}
    for worker in meta["workers"].values():
        assert worker["device"] == "cpu" and worker["environment"]["torch_threads"] == 1
        assert worker["host"] and worker["pid"] != os.getpid()
    assert meta["config"]["methods"] == METHODS.split(",")
    assert meta["methods"]["pld"]["lossless"] is True
    lines = [json.loads(t) for t in (out / "answers/pld.jsonl").read_text().splitlines()]
    assert {line["worker"] for line in lines} <= {"w0", "w1"}


@pytest.mark.ray
def test_a_worker_killed_mid_question_loses_and_duplicates_nothing(ray_cluster, tiny_model_dir,
                                                                   qfile, single, tmp_path):
    from specbench_cli.run.distributed import execute_sharded
    killed = []

    def kill_once(pool, slot):
        # Called right after the worker was handed its next question: it dies holding it.
        if not killed:
            os.kill(pool.info[slot]["pid"], signal.SIGKILL)
            killed.append(pool.ids[slot])

    console = Console(record=True, file=open(os.devnull, "w"))
    out = execute_sharded(plan(tiny_model_dir, qfile, tmp_path / "run"), 2, console=console,
                          on_result=kill_once)
    assert answers_of(out) == single          # every answer once, the same tokens
    workers = json.loads((out / "run.json").read_text())["workers"]
    assert f"{killed[0]}.1" in workers, workers.keys()      # its replacement joined the run
    assert f"worker {killed[0]} died" in console.export_text()


@pytest.mark.ray
def test_resume_after_the_driver_was_killed(ray_cluster, tiny_model_dir, qfile, single, tmp_path):
    from specbench_cli.run.distributed import execute_sharded
    stored = []

    def interrupt_after_three(pool, slot):
        stored.append(slot)
        if len(stored) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        execute_sharded(plan(tiny_model_dir, qfile, tmp_path / "run"), 2, console=quiet(),
                        on_result=interrupt_after_three)
    partial = answers_of(tmp_path / "run")
    assert 0 < sum(partial.values()) < sum(single.values()) and set(partial.values()) == {1}
    execute_sharded(plan(tiny_model_dir, qfile, tmp_path / "run", resume=True), 2,
                    console=quiet())
    assert answers_of(tmp_path / "run") == single


@pytest.mark.ray
def test_the_command_line_starts_a_local_ray(tiny_model_dir, qfile, single, tmp_path):
    """`specbench run --workers 2` in a fresh process: its own local Ray, then the report."""
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "specbench_cli.cli", *pinned_run((
                           "run", "--model", tiny_model_dir, "--bench", qfile, "--methods",
                           METHODS, "--max-new-tokens", 24, "--repeats", 2, "--warmup", 1,
                           "--workers", 2, "--out", out))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 Ray workers" in done.stdout and "lookahead" in done.stdout
    assert answers_of(out) == single


# ---------------------------------------------------------------- no Ray needed

def test_without_ray_the_error_says_how_to_install_it(tiny_model_dir, qfile, tmp_path,
                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray now fails
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_model_dir), "--bench",
                                      str(qfile), "--workers", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "--workers needs Ray, an optional extra: pip install 'specbench-suite[ray]'" in \
        result.output


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "auto"], "--ray-address is for sharded runs: give --workers N too"),
    (["--workers", "-1"], "--workers must be at least 0 (got -1)"),
])
def test_bad_worker_options_are_refused(tiny_model_dir, qfile, tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_model_dir), "--bench",
                                      str(qfile), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and message in result.output


def test_a_local_ray_gets_the_drivers_home_and_forced_kernel(monkeypatch, tmp_path):
    from specbench_cli.run.distributed import start_ray
    seen = {}

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            seen.update(kwargs)
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("SPECBENCH_KERNELS", "aten")
    monkeypatch.setenv("SPECBENCH_UNRELATED", "x")
    assert start_ray(FakeRay(), None) is True
    assert seen["runtime_env"] == {"env_vars": {"SPECBENCH_HOME": str(tmp_path),
                                                "SPECBENCH_KERNELS": "aten"}}
