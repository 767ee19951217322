"""Faults a trainer meets, injected for real: a SIGKILL mid-training, a kill inside the final
write, a corrupt checkpoint, a garbled or wrongly typed config.json. Each ends cleanly: an
unfinished add-on folder is refused in one line that says how to resume, the same command
resumes and finishes, a bad checkpoint is set aside, a bad config is one line naming it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from specbench_cli.drafters.addon_folder import UNFINISHED
from specbench_cli.errors import SpecbenchError
from specbench_cli.methods import METHODS, TRAINERS
from specbench_cli.train import loop

from conftest import write_questions
from test_cli import invoke

# Each trainer at its tiniest, and the option its method reads the folder from.
KINDS = {
    "kangaroo": ("adapter", {"exit_layer": 1}),
    "medusa": ("heads", {"num_heads": 2}),
    "hydra": ("heads", {"num_heads": 2}),
    "eagle": ("head", {}),
    "eagle3": ("head", {"draft_vocab": 32, "ttt": 2}),
    "sps": ("drafter", {"hidden_size": 32}),
}
QUESTION = {"question_id": 1, "category": "qa", "turns": ["Count."]}


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing of the trainer handles it (it is no Exception and
    no KeyboardInterrupt), so the folder is left as a kill at that point leaves it."""


def die(*args):
    raise Killed


def die_after_checkpoint(monkeypatch):
    save = loop.save_checkpoint

    def save_then_die(*args):
        save(*args)
        raise Killed
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


def train(kind, engine, tok, data, out, steps=4, **extra):
    _, options = KINDS[kind]
    return TRAINERS[kind].function(engine, tok, [data], out, steps=steps, batch_size=2,
                                   checkpoint_every=2, console=Console(quiet=True),
                                   **options, **extra)


def load(kind, engine, tok, folder):
    option, _ = KINDS[kind]
    return METHODS[kind](engine, {2}, tok, **{option: str(folder)})


def one_line_error(result, *phrases):
    """Exit status 2, no traceback, and one line holding every phrase."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(p in lines[0] for p in phrases), result.output


def run_with(model, tmp_path, kind, folder):
    bench = write_questions(tmp_path / "q.jsonl", [QUESTION])
    return invoke("run", "--model", model, "--bench", bench, "--methods", kind,
                  "--opt", f"{kind}.{KINDS[kind][0]}={folder}", "--max-new-tokens", 8,
                  "--warmup", 0, "--out", tmp_path / f"run-{time.monotonic_ns()}")


def test_a_trainer_killed_with_sigkill_is_refused_then_resumed(tiny_model_dir, counting_chats,
                                                               tmp_path):
    out = tmp_path / "adapter"
    args = ["train", "kangaroo", "--model", tiny_model_dir, "--data", counting_chats,
            "--out", out, "--steps", 30, "--batch-size", 2, "--checkpoint-every", 3,
            "--exit-layer", 1]
    trainer = subprocess.Popen([sys.executable, "-m", "specbench_cli.cli", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / loop.CHECKPOINT).exists() and trainer.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.02)
    assert trainer.poll() is None, "the trainer ended before it could be killed mid-training"
    os.kill(trainer.pid, signal.SIGKILL)
    assert trainer.wait() == -signal.SIGKILL

    result = run_with(tiny_model_dir, tmp_path, "kangaroo", out)
    # The refusal names the very command that resumes it (recorded by the killed process).
    one_line_error(result, f"Kangaroo adapter {out} is incomplete",
                   f"run `specbench train kangaroo --model {tiny_model_dir}", "again to resume")

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "resuming kangaroo adapter from step" in result.output
    assert "adapter saved to" in result.output
    # (and the hidden .lock a trainer holds while it writes there)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                               loop.TRAINING_LOG, ".lock"}
    # Every step logged exactly once across the kill: none lost, none counted twice.
    steps = [json.loads(line)["step"] for line in (out / loop.TRAINING_LOG).open()]
    assert steps == list(range(1, 31))
    result = run_with(tiny_model_dir, tmp_path, "kangaroo", out)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["after a checkpoint", "inside the final write"])
def test_every_addon_is_refused_until_its_trainer_finishes(tiny_engine, counting_chats,
                                                           tmp_path, monkeypatch, kind, where):
    engine, tok = tiny_engine
    out = tmp_path / kind
    if where == "after a checkpoint":
        die_after_checkpoint(monkeypatch)
    else:       # the weights and config.json are written, the folder is not marked finished
        monkeypatch.setattr(loop, "mark_finished", die)
    with pytest.raises(Killed):
        train(kind, engine, tok, counting_chats, out)
    monkeypatch.undo()
    assert (out / UNFINISHED).is_file() and (out / loop.CHECKPOINT).is_file()

    with pytest.raises(SpecbenchError) as err:
        load(kind, engine, tok, out)
    message = str(err.value)
    assert "\n" not in message and f" {out} is incomplete" in message
    assert "run the same `specbench train` command again to resume it" in message

    train(kind, engine, tok, counting_chats, out)
    assert not (out / UNFINISHED).exists() and not (out / loop.CHECKPOINT).exists()
    load(kind, engine, tok, out)


def checkpoint_of_a_killed_run(engine, tok, data, out, monkeypatch) -> Path:
    die_after_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        train("kangaroo", engine, tok, data, out)
    monkeypatch.undo()
    return out / loop.CHECKPOINT


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    truncate,
    lambda path: path.write_bytes(os.urandom(4096)),                                 # garbage
    lambda path: torch.save({"module": {}, "optimizer": {}, "step": "5"}, path),     # bad type
    lambda path: torch.save({"module": {"x": torch.zeros(3)}, "optimizer": {},       # other model
                             "step": 2}, path),
])
def test_a_corrupt_checkpoint_is_set_aside_and_training_restarts(
        tiny_model_dir, tiny_engine, counting_chats, tmp_path, monkeypatch, damage):
    engine, tok = tiny_engine
    out = tmp_path / "adapter"
    checkpoint = checkpoint_of_a_killed_run(engine, tok, counting_chats, out, monkeypatch)
    damage(checkpoint)
    result = invoke("train", "kangaroo", "--model", tiny_model_dir, "--data", counting_chats,
                    "--out", out, "--steps", 4, "--batch-size", 2, "--exit-layer", 1)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "resuming" not in result.output
    said = [line for line in result.output.splitlines() if "cannot be used" in line]
    assert len(said) == 1, result.output
    assert f"checkpoint {checkpoint}" in said[0]
    assert "set aside as checkpoint.pt.corrupt, training starts over" in said[0]
    assert (out / "checkpoint.pt.corrupt").is_file() and not checkpoint.exists()
    steps = [json.loads(line)["step"] for line in (out / loop.TRAINING_LOG).open()]
    assert steps == [1, 2, 3, 4]            # from scratch, each step once
    load("kangaroo", tiny_engine[0], tok, out)


# A config.json field each loader reads, and a value of the wrong type for it.
READ_FIELD = {"kangaroo": "hidden_size", "eagle": "num_hidden_layers",
              "eagle3": "draft_vocab_size", "hydra": "hydra_num_heads"}


@pytest.mark.parametrize("kind", READ_FIELD)
@pytest.mark.parametrize("garble", ["malformed", "not an object", "wrong type"])
def test_a_garbled_config_is_one_line_naming_it(tiny_model_dir, tiny_engine, counting_chats,
                                                tmp_path, kind, garble):
    engine, tok = tiny_engine
    out = tmp_path / kind
    train(kind, engine, tok, counting_chats, out, steps=1)
    field = READ_FIELD[kind]
    content, says = {
        "malformed": ('{"hidden_size": 64,', "malformed JSON"),
        "not an object": ('["a list"]', "expected an object"),
        "wrong type": (json.dumps({field: "2"}), f"field {field!r} must be an integer"),
    }[garble]
    (out / "config.json").write_text(content)
    one_line_error(run_with(tiny_model_dir, tmp_path, kind, out),
                   f"{out / 'config.json'}: {says}")


def test_a_second_trainer_on_one_folder_is_refused_naming_the_first(tiny_model_dir,
                                                                    counting_chats, tmp_path):
    from specbench_cli.files import folder_lock
    out = tmp_path / "adapter"
    with folder_lock(out, "specbench train"):
        result = invoke("train", "kangaroo", "--model", tiny_model_dir, "--data",
                        counting_chats, "--out", out, "--steps", 2, "--exit-layer", 1)
        one_line_error(result, f"{out} is in use by another specbench train (pid {os.getpid()})")
    assert not (out / "config.json").exists()
