"""Faults a long benchmark meets on a shared machine, injected for real: caches cut short or
corrupted, a run killed (SIGKILL, SIGTERM) and resumed, two runs on one folder, files that are
valid JSON but not what a reader needs, an unusable $SPECBENCH_HOME. Each ends the promised way:
a rebuild with one line, a resume with every question once, or a refusal with one line; never a
traceback. (Trainers' faults: test_faults_train.py.)"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench_cli.cli import app
from specbench_cli.engine import kernels
from specbench_cli.engine.load import load_engine
from specbench_cli.errors import SpecbenchError
from specbench_cli.files import folder_lock

from conftest import write_questions
from test_cli import ONE_THREAD, QUESTIONS, answers_of, cli_command


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line(text: str) -> str:
    """The only line of `text`, which must hold no traceback."""
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def refused(result, pattern: str):
    assert result.exit_code == 2, result.output
    assert pattern in " ".join(one_line(result.stderr).split()), result.stderr


# ------------------------------------------------------------------------------------ caches

def test_a_truncated_kernel_library_is_rebuilt_with_one_line(tmp_path):
    if kernels.cpu_library() is None:
        pytest.skip(f"no cpu.c here: {kernels._LIB['why']}")
    env = {**os.environ, "SPECBENCH_HOME": str(tmp_path)}
    load = [sys.executable, "-c", "from specbench_cli.engine import kernels; "
            "print(kernels.cpu_library().gemv_f32 is not None)"]
    first = subprocess.run(load, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.strip() == "True", first.stderr
    (library,) = (tmp_path / "kernels").glob("cpu-*.so")
    library.write_bytes(library.read_bytes()[:4096])            # a build cut short
    second = subprocess.run(load, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.strip() == "True", second.stderr
    assert f"{library} is incomplete" in one_line(second.stderr)
    assert "building it again" in second.stderr
    assert library.stat().st_size > 4096


def test_unreadable_and_stale_choice_caches_are_measured_again(tiny_model_dir, tmp_path,
                                                               monkeypatch, capfd):
    from specbench_cli.engine import fused
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path))
    monkeypatch.setenv(kernels.ENV, "auto")          # the choices that are cached: the timed ones
    monkeypatch.setenv(fused.FUSED_ENV, "auto")
    # What is measured does not matter here, only what becomes of the cache: timings stand in.
    monkeypatch.setattr(kernels, "time_group", lambda modules, name, rows, repeats=0:
                        {"aten": 1e-3, "gemv": 5e-4, "onednn": 2e-3}[name])
    monkeypatch.setattr(fused, "measure", lambda engine, amx=False: {
        str(b): {"torch": 1.0, "fused": 0.5} for b in kernels.BUCKETS})
    engine, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                               with_tokenizer=False)
    want = engine.kernel_choice["groups"]
    choices, fused = tmp_path / "kernels" / "choices.json", tmp_path / "kernels" / "fused.json"
    choices.write_text('{"half a fi')                           # a write cut short
    fused.write_text(json.dumps({k: {"1": "fast"} for k in json.loads(fused.read_text())}))
    capfd.readouterr()
    again, _, _ = load_engine(str(tiny_model_dir), dtype="fp32", device="cpu",
                              with_tokenizer=False)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert f"specbench: {choices} is unreadable (cut short or corrupt); measuring again" in err
    assert f"specbench: {fused}: the entry for this machine is not what this version writes" \
        in err
    assert not again.kernel_choice["cached"] and set(again.kernel_choice["groups"]) == set(want)
    assert kernels.valid_choice(next(iter(json.loads(choices.read_text()).values()))
                                [next(iter(want))])
    # a group's entry of another shape: that group alone is measured again
    stored = json.loads(choices.read_text())
    entry = next(iter(stored))
    group = next(iter(want))
    stored[entry][group] = {"1": {"kernel": "no such kernel"}}
    choices.write_text(json.dumps(stored))
    capfd.readouterr()
    load_engine(str(tiny_model_dir), dtype="fp32", device="cpu", with_tokenizer=False)
    assert f"choices for {group} are not what this version writes" in capfd.readouterr().err
    assert kernels.valid_choice(json.loads(choices.read_text())[entry][group])


def test_a_cache_entry_is_remeasured_only_when_unusable(tmp_path, capfd):
    path, calls = tmp_path / "dtypes.json", []

    def measure():
        calls.append(1)
        return {"fp32": 2.0, "bf16": 1.0}

    def valid(e):
        return kernels.timed_ms(e, ("fp32", "bf16"))
    assert kernels.cached_entry(path, "k", valid, measure) == {"fp32": 2.0, "bf16": 1.0}
    assert kernels.cached_entry(path, "k", valid, measure) and len(calls) == 1
    path.write_text(json.dumps({"k": {"fp32": "fast", "bf16": True}}))
    capfd.readouterr()
    assert kernels.cached_entry(path, "k", valid, measure) == {"fp32": 2.0, "bf16": 1.0}
    assert len(calls) == 2 and "not what this version writes" in capfd.readouterr().err
    path.write_text("[1, 2]")                                    # JSON, but not a cache
    assert kernels.cached_entry(path, "k", valid, measure) and len(calls) == 3
    assert "is unreadable" in capfd.readouterr().err


def test_a_damaged_builtin_build_is_built_again_with_one_line(tmp_path, capfd):
    from rich.console import Console
    from specbench_cli.models.builtin import prepare_builtin, tiny_recipe
    console = Console(file=io.StringIO(), width=120)
    built = prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console)
    weights = built.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])            # a disk that filled, say
    capfd.readouterr()
    again = prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console)
    assert not again.reused and again.hashes == built.hashes
    err = one_line(capfd.readouterr().err)
    assert "is damaged (model.safetensors changed since it was built); building it again" in err
    (built.root / "done.json").write_text('{"quality": {}}')      # valid JSON, a field short
    capfd.readouterr()
    assert not prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console).reused
    assert "done.json: missing field 'hashes'" in one_line(capfd.readouterr().err)
    assert prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console).reused


def test_a_damaged_gguf_conversion_is_converted_again(tmp_path, capfd):
    pytest.importorskip("gguf")
    from test_gguf import write_gguf
    from specbench_cli.engine.gguf import gguf_folder
    source = tmp_path / "tiny.gguf"
    write_gguf(source, "llama")
    folder = gguf_folder(source, home=tmp_path / "home")
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:len(whole) // 2])
    capfd.readouterr()
    assert gguf_folder(source, home=tmp_path / "home") == folder
    err = capfd.readouterr().err      # (then transformers' own progress bars)
    assert "Traceback" not in err
    assert f"the converted folder {folder} is damaged" in err.splitlines()[0]
    assert "truncated" in err.splitlines()[0]
    assert weights.read_bytes() == whole


def test_a_truncated_gguf_file_is_one_line(tmp_path):
    pytest.importorskip("gguf")
    from test_gguf import write_gguf
    source = tmp_path / "tiny.gguf"
    write_gguf(source, "llama")
    source.write_bytes(source.read_bytes()[:10])
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    refused(invoke("run", "--model", source, "--bench", qfile),
            "tiny.gguf: not a GGUF file this reader knows")


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_a_specbench_home_that_cannot_be_used_is_one_line(tmp_path, kind):
    blocker = tmp_path / "home"
    blocker.write_text("not a folder")
    home = blocker if kind == "file" else blocker / "cache"
    refused(invoke("prepare", env={"SPECBENCH_HOME": str(home)}),
            f"SPECBENCH_HOME {home} cannot be used")


# ----------------------------------------------------------------------------------- readers

def write_run(folder: Path, rows: list[dict]) -> Path:
    (folder / "answers").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": {"model": "m",
                                                            "methods": ["vanilla"]}}))
    (folder / "answers" / "vanilla.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def answer(qid: int, **changes) -> dict:
    row = {"question_id": qid, "category": "writing", "method": "vanilla", "repeat": 0,
           "choices": [{"turns": ["x"], "new_tokens": [4], "wall_time": [0.5],
                        "accept_lengths": [1, 1, 1, 1]}], "token_ids": [[5, 6, 7, 8]]}
    return {**row, **changes}


@pytest.mark.parametrize("change, said", [
    (lambda r: r.pop("category"), ":2: missing field 'category'"),
    (lambda r: r.update(question_id="7"), ":2: field 'question_id' must be an integer, got a "
                                          "string"),
    (lambda r: r["choices"][0].pop("wall_time"), ":2: choices[0]: missing field 'wall_time'"),
    (lambda r: r.update(choices=[]), ":2: field 'choices' is empty"),
    (lambda r: r["choices"][0].update(new_tokens=[-3]), ":2: choices[0].new_tokens and "
                                                        "wall_time must be lists"),
])
def test_report_names_the_file_line_and_field_of_a_bad_answer_line(tmp_path, change, said):
    bad = answer(2)
    change(bad)
    run = write_run(tmp_path / "run", [answer(1), bad])
    refused(invoke("report", run), f"vanilla.jsonl{said}")


@pytest.mark.parametrize("text, said", [
    ("{", "run.json: malformed JSON"),
    ("[]", "run.json: expected an object with config"),
    ('{"config": {"model": "m"}}', "run.json: config: missing field 'methods'"),
])
def test_report_and_resume_refuse_a_bad_run_json_in_one_line(tmp_path, tiny_model_dir, text,
                                                             said):
    run = write_run(tmp_path / "run", [answer(1)])
    (run / "run.json").write_text(text)
    refused(invoke("report", run), said)
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    refused(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out", run,
                   "--resume"), said)


# --------------------------------------------------------------------------- killed and racing

def run_command(model, qfile, out, *extra):
    return cli_command(model, qfile, out, "--methods", "vanilla,pld", *extra)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The same run, never interrupted: the answers every faulted run must end with."""
    folder = tmp_path_factory.mktemp("faults")
    qfile = write_questions(folder / "q.jsonl", QUESTIONS)
    finish(tiny_model_dir, qfile, folder / "full")
    return qfile, answers_of(folder / "full")


def finish(model, qfile, out, *extra):
    """A run to its end (resumed, with --resume), which must succeed."""
    done = subprocess.run(run_command(model, qfile, out, *extra), capture_output=True, text=True,
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr


def start(model, qfile, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(run_command(model, qfile, out, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def wait_for_answers(out: Path, proc: subprocess.Popen, count: int):
    """Until `count` answer lines exist (or the run ended)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        files = list((out / "answers").glob("*.jsonl")) if (out / "answers").is_dir() else []
        if sum(f.read_bytes().count(b"\n") for f in files) >= count:
            return
        time.sleep(0.01)


def test_three_sigkills_at_random_points_then_resume_equal_an_uninterrupted_run(
        tiny_model_dir, reference, tmp_path):
    qfile, want = reference
    total = sum(map(len, want.values()))
    out, rng = tmp_path / "killed", random.Random(7)
    for kill in range(3):
        proc = start(tiny_model_dir, qfile, out, *(["--resume"] if kill else []))
        # within the first three fifths of the run, so that each kill lands before its end
        wait_for_answers(out, proc, rng.randint(kill * total // 5 + 1, (kill + 1) * total // 5))
        time.sleep(rng.uniform(0, 0.02))          # anywhere inside a question, or a write
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        proc.stderr.close()
        answers_of(out)                          # never a duplicate, even between kills
    assert sum(map(len, answers_of(out).values())) < total, "the run ended before a kill"
    finish(tiny_model_dir, qfile, out, "--resume")
    assert answers_of(out) == want


def test_sigterm_drops_the_question_in_flight_in_one_line_then_resume_completes(
        tiny_model_dir, reference, tmp_path):
    qfile, want = reference
    out = tmp_path / "termed"
    proc = start(tiny_model_dir, qfile, out)
    wait_for_answers(out, proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    line = one_line(err.split("\r")[-1] if "\r" in err else err)
    assert line.startswith("terminated (SIGTERM); answers so far are kept") and "--resume" in line
    finish(tiny_model_dir, qfile, out, "--resume")
    assert answers_of(out) == want


def test_a_run_on_a_folder_another_run_holds_is_refused_naming_its_pid(tiny_model_dir, tmp_path):
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    out = tmp_path / "held"
    with folder_lock(out, "specbench run"):
        for extra in ((), ("--resume",)):
            refused(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out", out,
                           "--warmup", 0, *extra),
                    f"{out} is in use by another specbench run (pid {os.getpid()})")
    assert not (out / "answers").exists()
    # freed with its holder: the same run now goes through
    assert invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out", out, "--warmup",
                  0, "--max-new-tokens", 8).exit_code == 0


def test_two_runs_started_together_on_one_folder_never_duplicate_an_answer(
        tiny_model_dir, reference, tmp_path):
    qfile, want = reference
    out = tmp_path / "twice"
    procs = [start(tiny_model_dir, qfile, out, "--resume") for _ in range(2)]
    endings = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    codes = sorted(code for code, _ in endings)
    assert codes[0] == 0, endings
    if codes[1] != 0:            # the other was refused at once (or after planning)
        (err,) = [e for code, e in endings if code != 0]
        assert "is in use by another specbench run (pid" in err or "holds a run already" in err
        assert "Traceback" not in err
    assert answers_of(out) == want


def test_a_line_cut_short_is_repaired_and_a_damaged_one_is_named(tiny_model_dir, reference,
                                                                 tmp_path):
    qfile, want = reference
    out = tmp_path / "cut"
    proc = start(tiny_model_dir, qfile, out)
    wait_for_answers(out, proc, 4)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    vanilla = out / "answers" / "vanilla.jsonl"
    lines = vanilla.read_bytes().splitlines(keepends=True)
    vanilla.write_bytes(b"".join(lines) + lines[0][:25])        # a write cut mid-line
    finish(tiny_model_dir, qfile, out, "--resume")
    assert answers_of(out) == want
    rows = vanilla.read_text().splitlines()
    rows[1] = rows[1].replace('"category"', '"kategory"')
    vanilla.write_text("\n".join(rows) + "\n")
    refused(invoke(*run_command(tiny_model_dir, qfile, out, "--resume")[3:]),
            "vanilla.jsonl:2: missing field 'category'")


def test_the_lock_is_the_folder_s_and_freed_on_exit(tmp_path):
    with folder_lock(tmp_path / "a"):
        with pytest.raises(SpecbenchError, match=r"in use by another run \(pid \d+\)"):
            with folder_lock(tmp_path / "a"):
                pass
        with folder_lock(tmp_path / "b"):          # another folder is free
            pass
    with folder_lock(tmp_path / "a"):
        pass
