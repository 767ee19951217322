"""End to end through the command line: a run, its files, bad input, interrupt and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from specbench_cli.cli import app

from conftest import OFFICIAL_QUESTIONS, pinned_run, write_questions

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a poem about the sea.",
                                                        "Now make it shorter."]},
    {"question_id": 2, "category": "translation", "turns": ["Translate German to English: Guten Tag"]},
    {"question_id": 3, "category": "summarization",
     "turns": ["Summarize: The cat sat on the mat. The dog sat on the log. The cat was happy."]},
    {"question_id": 4, "category": "qa", "turns": ["Who wrote Hamlet?"]},
    {"question_id": 5, "category": "math_reasoning", "turns": ["Tom has 3 apples and eats 1."]},
    {"question_id": 6, "category": "rag", "turns": ["Passage: Paris is in France. Q: Where is Paris?"]},
]


@pytest.fixture()
def qfile(tmp_path):
    return write_questions(tmp_path / "q.jsonl", QUESTIONS)


def invoke(*args):
    """The CLI in this process; a `run` without `--dtype` runs in fp32 (conftest.pinned_run)."""
    result = CliRunner().invoke(app, pinned_run(args))
    return result


def test_run_writes_answers_and_summary_and_methods_equal_vanilla(tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens", 40,
                    "--warmup", 1, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["template"] == "vicuna_v1.1"
    assert meta["config"]["methods"] == ["vanilla", "pld", "llma"]
    for key in ("python", "torch", "transformers", "cpu", "torch_threads", "git_commit"):
        assert key in meta["environment"]
    lines = [json.loads(l) for l in (out / "answers/pld.jsonl").read_text().splitlines()]
    assert [l["question_id"] for l in lines] == [1, 2, 3, 4, 5, 6]
    first = lines[0]["choices"][0]
    assert len(first["turns"]) == 2 and len(first["new_tokens"]) == 2
    assert sum(first["accept_lengths"]) == sum(first["new_tokens"])
    summary = json.loads((out / "summary.json").read_text())
    for name in ("pld", "llma"):
        assert summary["methods"][name]["equal_to_vanilla"]["share"] == 1.0
    assert summary["methods"]["vanilla"]["speedup_overall"] == 1.0
    assert "speedup: mean over questions" in result.output


def test_official_questions_pld_and_llma_equal_vanilla(tiny_model_dir, tmp_path):
    if not OFFICIAL_QUESTIONS.exists():
        pytest.skip("official question file not present")
    out = tmp_path / "official"
    result = invoke("run", "--model", tiny_model_dir, "--bench", OFFICIAL_QUESTIONS, "--limit", 3,
                    "--max-new-tokens", 32, "--warmup", 0, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["vanilla"]["questions"] == 18
    for name in ("pld", "llma"):
        eq = summary["methods"][name]["equal_to_vanilla"]
        assert (eq["share"], eq["compared"], eq["first_diff"]) == (1.0, 18, None)


def one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    text = result.stderr
    assert "Traceback" not in text and "error:" in text
    assert pattern in " ".join(text.split()), text


@pytest.mark.parametrize("args, pattern", [
    (["--methods", "vanilla,turbo"], "unknown method 'turbo'; valid: vanilla, pld, llma, kangaroo, medusa, rest"),
    (["--tasks", "poems"], "unknown subtask 'poems'"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--template", "alpaca"], "--template 'alpaca'"),
    (["--dtype", "fp8"], "--dtype 'fp8'"),
])
def test_bad_options_are_one_line_errors(tiny_model_dir, qfile, args, pattern):
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, *args), pattern)


def test_chat_template_needs_one_and_is_recorded(tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "chat"
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--template", "chat",
                          "--out", out), "this tokenizer has no chat template")
    assert not out.exists()
    import shutil
    chat_model = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, chat_model)
    cfg = json.loads((chat_model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                            "{% endfor %}assistant:")
    (chat_model / "tokenizer_config.json").write_text(json.dumps(cfg))
    result = invoke("run", "--model", chat_model, "--bench", qfile, "--template", "chat",
                    "--max-new-tokens", 8, "--warmup", 0, "--tasks", "qa", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["template"] == "chat"


def test_bad_files_are_one_line_errors(tiny_model_dir, qfile, tmp_path):
    one_line_error(invoke("run", "--model", tmp_path / "missing", "--bench", qfile),
                   "does not exist")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    one_line_error(invoke("run", "--model", gpt2, "--bench", qfile),
                   "model_type 'gpt2' is not supported")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "qa", "turns": ["x"]}\n{oops\n')
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", bad),
                   f"{bad}:2: malformed JSON")
    one_line_error(invoke("report", tmp_path / "nothing"), "does not exist")
    empty = tmp_path / "empty"
    (empty / "answers").mkdir(parents=True)
    one_line_error(invoke("report", empty), "no answers yet (empty run)")


def answers_of(run_dir: Path) -> dict:
    out = {}
    for f in sorted((run_dir / "answers").glob("*.jsonl")):
        rows = [json.loads(l) for l in f.read_text().splitlines()]
        keys = [(r["question_id"], r["repeat"]) for r in rows]
        assert len(keys) == len(set(keys)), f"{f.name}: an answer was written twice"
        out[f.stem] = {k: r["token_ids"] for k, r in zip(keys, rows)}
    return out


# The run under test keeps one core: on two, its torch threads could starve this process's
# polling loop until the whole (sub-second) run had ended before the signal was sent.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli_command(model, qfile, out, *extra):
    return [sys.executable, "-m", "specbench_cli.cli", *pinned_run((
        "run", "--model", model, "--bench", qfile, "--max-new-tokens", 48, "--repeats", 2,
        "--warmup", 0, "--out", out, *extra))]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """The reference: the same run, never interrupted."""
    folder = tmp_path_factory.mktemp("resume")
    qfile = write_questions(folder / "q.jsonl", QUESTIONS)
    subprocess.run(cli_command(tiny_model_dir, qfile, folder / "full"), check=True,
                   capture_output=True, env=ONE_THREAD)
    return qfile, answers_of(folder / "full")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_without_loss_or_repeats(tiny_model_dir, uninterrupted, tmp_path,
                                                         sig):
    qfile, want = uninterrupted
    cut = tmp_path / "cut"
    # SIGINT back to its default in the child: a background shell (CI launched with `&`) starts
    # its jobs with SIGINT ignored, and Python keeps an inherited ignore.
    proc = subprocess.Popen(cli_command(tiny_model_dir, qfile, cut), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ONE_THREAD,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    vanilla = cut / "answers" / "vanilla.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if vanilla.exists() and vanilla.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    partial = answers_of(cut)
    assert sum(map(len, partial.values())) < sum(map(len, want.values())), "run ended too soon"
    subprocess.run(cli_command(tiny_model_dir, qfile, cut, "--resume"), check=True,
                   capture_output=True, env=ONE_THREAD)
    got = answers_of(cut)
    assert {m: set(a) for m, a in got.items()} == {m: set(a) for m, a in want.items()}
    assert got == want   # greedy fp32 tokens are deterministic


def test_resume_refuses_other_options(tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "r"
    assert invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens", 8,
                  "--warmup", 0, "--out", out).exit_code == 0
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens",
                          9, "--warmup", 0, "--out", out, "--resume"), "max_new_tokens differ")
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens",
                          8, "--warmup", 0, "--out", out), "holds a run already")


def test_sweep_over_paths_keeps_each_variant_in_its_own_file(tiny_model_dir, tiny_engine, qfile,
                                                             tmp_path):
    from specbench_cli.drafters.datastore import build_datastore
    _, tok = tiny_engine
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "The cat sat on the mat. Paris is in France."}) + "\n")
    stores = [tmp_path / "stores" / name / "ds" for name in ("a", "b")]
    for store in stores:
        build_datastore(tok, [corpus], store, "tiny")
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens", 12,
                    "--warmup", 0, "--methods", "rest", "--out", out,
                    "--sweep", f"rest.datastore={stores[0]},{stores[1]}")
    assert result.exit_code == 0, result.output
    names = [f"rest@datastore={s}" for s in stores]
    assert len(list((out / "answers").glob("*.jsonl"))) == 3       # vanilla + one per store
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["vanilla"] + names
    for name in names:
        assert summary["methods"][name]["equal_to_vanilla"]["share"] == 1.0


def test_train_commands_save_what_the_methods_load(tiny_model_dir, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"conversations": [
        {"from": "human", "value": f"Say {i} twice."},
        {"from": "gpt", "value": f"{i} {i} and that is all."}]}) + "\n" for i in range(8)))
    common = ("--model", tiny_model_dir, "--data", data, "--steps", 2, "--batch-size", 2)
    result = invoke("train", "kangaroo", *common, "--out", tmp_path / "adapter")
    assert result.exit_code == 0, result.output
    assert "adapter saved to" in result.output
    assert (tmp_path / "adapter" / "model.safetensors").exists()
    result = invoke("train", "medusa", *common, "--num-heads", 2, "--out", tmp_path / "heads")
    assert result.exit_code == 0, result.output
    assert "heads saved to" in result.output
    assert (tmp_path / "heads" / "medusa_lm_head.safetensors").exists()
    result = invoke("train", "medusa", *common, "--num-heads", 0, "--out", tmp_path / "h0")
    assert result.exit_code == 2 and "num_heads must be at least 1" in result.output
    result = invoke("train", "sps", *common, "--hidden-size", 32, "--no-distill",
                    "--out", tmp_path / "drafter")
    assert result.exit_code == 0, result.output
    assert "drafter saved to" in result.output
    drafter = json.loads((tmp_path / "drafter" / "config.json").read_text())
    assert drafter["hidden_size"] == 32 and drafter["num_hidden_layers"] == 1
    result = invoke("train", "sps", *common, "--steps", 0, "--out", tmp_path / "d0")
    assert result.exit_code == 2 and "--steps must be at least 1 (got 0)" in result.output
    result = invoke("train", "eagle", *common, "--noise", 0, "--out", tmp_path / "eagle")
    assert result.exit_code == 0, result.output
    assert "head saved to" in result.output
    head = json.loads((tmp_path / "eagle" / "config.json").read_text())
    assert head["num_hidden_layers"] == 1 and head["specbench"]["noise"] == 0
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "category": "qa",
                                                        "turns": ["Say 3 twice."]}])
    result = invoke("run", "--model", tiny_model_dir, "--bench", questions,
                    "--methods", "eagle", "--opt", f"eagle.head={tmp_path / 'eagle'}",
                    "--max-new-tokens", 16, "--out", tmp_path / "eagle-run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eagle-run" / "summary.json").read_text())
    assert summary["methods"]["eagle"]["equal_to_vanilla"]["share"] == 1.0


def copy_model(src: Path, dst: Path, config: dict | None = None, chat_template: str | None = None):
    import shutil
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    if chat_template:
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        (dst / "tokenizer_config.json").write_text(json.dumps({**cfg,
                                                               "chat_template": chat_template}))
    return dst


CHAT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


@pytest.mark.parametrize("name, chat, want", [("plain", None, "vicuna_v1.1"),
                                              ("chatty", CHAT, "chat"),
                                              ("my-vicuna-7b", CHAT, "vicuna_v1.1")])
def test_auto_template_follows_the_tokenizer_and_vicuna(tiny_model_dir, qfile, tmp_path, name,
                                                        chat, want):
    model = copy_model(tiny_model_dir, tmp_path / name, chat_template=chat)
    out = tmp_path / "run"
    result = invoke("run", "--model", model, "--bench", qfile, "--tasks", "qa", "--methods",
                    "pld", "--max-new-tokens", 4, "--warmup", 0, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["template"] == want


def test_torch_dtype_names_are_accepted(tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--tasks", "qa",
                    "--max-new-tokens", 4, "--warmup", 0, "--dtype", "float32", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["dtype"] == "fp32"
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--dtype", "int8"),
                   "bfloat16")


def test_out_that_is_a_file_is_a_one_line_error(tiny_model_dir, qfile, tmp_path):
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    for out in (taken, taken / "run"):
        one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out", out),
                       "a file is in the way")
    assert taken.read_text() == "mine"


def test_resume_of_a_run_killed_before_it_was_written_starts_it(tiny_model_dir, qfile, tmp_path):
    out = tmp_path / "never-written"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--tasks", "qa",
                    "--max-new-tokens", 4, "--warmup", 0, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "no earlier run in" in result.output and (out / "run.json").exists()
    stray = tmp_path / "stray"
    (stray / "answers").mkdir(parents=True)
    (stray / "answers" / "vanilla.jsonl").write_text("{}\n")
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--out", stray,
                          "--resume"), "holds answers but no run.json")


def test_prompt_past_the_context_is_refused_or_capped(tiny_model_dir, qfile, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path / "short", {"max_position_embeddings": 300})
    out = tmp_path / "run"
    # One token a character: question 1's second turn is 239 tokens even with an empty first
    # answer, the summary's prompt 250, the QA one 190.
    one_line_error(invoke("run", "--model", model, "--bench", qfile, "--max-new-tokens", 80,
                          "--out", out),
                   "question 1 (mt_bench), turn 2: a prompt of 239 tokens + --max-new-tokens 80 "
                   "exceeds the model's context of 300 positions")
    assert not out.exists()
    one_line_error(invoke("run", "--model", model, "--bench", qfile, "--over-context", "wrap"),
                   "--over-context 'wrap'")
    result = invoke("run", "--model", model, "--bench", qfile, "--tasks", "qa,summarization",
                    "--max-new-tokens", 80, "--warmup", 0, "--over-context", "cap", "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["over_context"] == "cap"
    from specbench_cli.bench.prompts import build_prompt_ids
    from specbench_cli.engine.load import load_tokenizer
    tok = load_tokenizer(model)
    capped = []
    for row in map(json.loads, (out / "answers" / "vanilla.jsonl").read_text().splitlines()):
        q = next(q for q in QUESTIONS if q["question_id"] == row["question_id"])
        for turn, new in enumerate(row["choices"][0]["new_tokens"]):
            prompt = build_prompt_ids(tok, "vicuna_v1.1", q["turns"][:turn + 1],
                                      row["choices"][0]["turns"][:turn])
            assert len(prompt) + new <= 300
            capped.append(len(prompt) + new == 300)
    assert capped == [True, False]      # the summary stops at the context; QA fits


def test_a_bug_keeps_its_traceback_while_user_errors_are_one_line(tiny_model_dir, qfile,
                                                                    monkeypatch):
    """Only SpecbenchError becomes a one-line message: a ValueError from a bug (here planted in
    the question loader) must reach the caller with its traceback, not be dressed as bad input."""
    import specbench_cli.api as api

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside")
    monkeypatch.setattr(api, "load_questions", broken)
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--device", "cpu")
    assert result.exit_code != 2 and isinstance(result.exception, ValueError)
    assert "a bug deep inside" in str(result.exception)
    assert "error:" not in result.output


def test_opt_and_a_run_config_set_method_options(tiny_model_dir, qfile, tmp_path):
    """A YAML config holds run options and method options; --opt and flags typed on the
    command line win over it."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\nbench: {qfile}\nmethods: [pld, llma]\n"
                      "tasks: qa\nmax-new-tokens: 8\nwarmup: 0\n"
                      "options: {pld: {num_draft: 4, max_ngram: 2}, llma: {num_draft: 7}}\n")
    out = tmp_path / "run"
    result = invoke("run", "--config", config, "--opt", "pld.num_draft=3", "--max-new-tokens", 6,
                    "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["max_new_tokens"] == 6 and meta["config"]["subtasks"] == ["qa"]
    assert meta["methods"]["pld"]["options"] == {"max_ngram": 2, "num_draft": 3}
    assert meta["methods"]["llma"]["options"] == {"ngram": 1, "num_draft": 7}


@pytest.mark.parametrize("args, pattern", [
    (["--opt", "pld.numdraft=3"], "pld has no option 'numdraft'; known: max_ngram, num_draft"),
    (["--opt", "pld.num_draft=x"], "expected int, got 'x'"),
    (["--opt", "kangaroo.threshold=0.5"], "options for kangaroo, which is not in --methods"),
    (["--sweep", "pld.num_draft=1,two"], "--sweep pld.num_draft=1,two: expected int, got 'two'"),
])
def test_bad_method_options_are_one_line_errors(tiny_model_dir, qfile, args, pattern):
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--methods", "pld", *args)
    assert result.exit_code == 2 and pattern in result.output, result.output


def test_bad_run_configs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: x\n")
    result = invoke("run", "--config", bad)
    assert result.exit_code == 2 and "unknown run option(s) modle" in result.output
    bad.write_text("options: {pld: 3}\n")
    result = invoke("run", "--config", bad)
    assert result.exit_code == 2 and "options must map each method to its options" in result.output
    result = invoke("run", "--config", tmp_path / "none.yaml")
    assert result.exit_code == 2 and "no such file" in result.output


def test_list_shows_every_option_with_its_help():
    from specbench_cli.methods import METHODS
    result = CliRunner().invoke(app, ["list"], terminal_width=400)
    assert result.exit_code == 0
    for cls in METHODS.values():
        for key, option in cls.options.items():
            line = next((l for l in result.output.splitlines() if f" {key} " in l
                         and option.help[:30] in l), None)
            assert line is not None, (cls.name, key)


def test_the_python_api_runs_what_the_cli_runs(tiny_model_dir, qfile, tmp_path):
    from specbench_cli import api
    frame = api.run(model=str(tiny_model_dir), bench=str(qfile), methods="pld", tasks="qa",
                    max_new_tokens=8, warmup=0, out=tmp_path / "run",
                    options={"pld": {"num_draft": 2}})
    assert list(frame.index) == ["vanilla", "pld"]
    assert frame.loc["vanilla", "overall"] == 1.0 and frame.loc["pld", "equal"] == 1.0
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["methods"]["pld"]["options"]["num_draft"] == 2
    with pytest.raises(api.SpecbenchError, match="--limit must be at least 1"):
        api.plan_run(limit=0)


def test_every_run_option_is_one_declaration_the_cli_config_and_api_share(tmp_path):
    """The flags of `specbench run`, a config file's keys and plan_run's keywords are all the
    run options declared in run_options.RUN_OPTIONS, with one default each."""
    import inspect

    from specbench_cli import api
    from specbench_cli.run.runner import RunConfig
    from specbench_cli.run_options import RUN_OPTIONS
    declared = {o.name: o for o in RUN_OPTIONS}
    command = typer.main.get_command(app).commands["run"]
    flags = {p.name: p for p in command.params if p.name != "help"}
    assert set(flags) == set(declared)
    for name, param in flags.items():
        assert param.default == declared[name].default and \
            declared[name].dashed in param.opts, name
    keyword = inspect.signature(api.plan_run).parameters
    plan = {o.name for o in RUN_OPTIONS if o.to == "plan"}
    assert set(keyword) == plan | {"console"}
    assert all(keyword[n].default == declared[n].default for n in plan)
    # A config file takes every option but --config itself, and nothing else.
    config = tmp_path / "run.yaml"
    config.write_text("".join(f"{n}: null\n" for n in declared if n != "config"))
    assert set(api.read_run_config(config)) == set(declared) - {"config"}
    # What run.json records is either a run option of the same name or resolved by the plan.
    resolved = {"model", "bench", "bench_sha256", "limit", "methods", "method_options",
                "template", "dtype", "device", "over_context", "subtasks", "batch_sizes"}
    from dataclasses import fields
    assert {f.name for f in fields(RunConfig)} - resolved <= plan


def test_threads_is_the_runs_cpu_threads_recorded_and_then_given_back(tiny_model_dir, qfile,
                                                                       tmp_path):
    import torch
    before = torch.get_num_threads()
    out = tmp_path / "threads"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--methods", "pld",
                    "--tasks", "qa", "--max-new-tokens", 8, "--warmup", 0, "--threads", 1,
                    "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["threads"] == 1 and meta["environment"]["torch_threads"] == 1
    assert torch.get_num_threads() == before
    one_line_error(invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--threads", 0),
                   "--threads must be at least 1 (got 0)")


@pytest.mark.parametrize("given, message", [
    ({"repeats": 0}, "--repeats must be at least 1 (got 0)"),
    ({"warmup": -1}, "--warmup must be at least 0 (got -1)"),
    ({"max_new_tokens": "8"}, "--max-new-tokens must be int, got '8'"),
    ({"breakdown": 1}, "--breakdown must be bool, got 1"),
    ({"temperature": -0.5}, "--temperature must be at least 0 (got -0.5)"),
    ({"max_tokens": 8}, "unknown run option(s) max_tokens"),
])
def test_the_python_api_checks_each_run_option_as_declared(given, message):
    from specbench_cli import api
    with pytest.raises(api.SpecbenchError) as err:
        api.plan_run(**given)
    assert message in str(err.value)


def test_every_command_is_known_to_python_dash_m():
    """Commands registered after `if __name__ == "__main__"` would be missing here."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "specbench_cli.cli", "check-sampling",
                           "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "chi-square" in done.stdout, done.stderr
