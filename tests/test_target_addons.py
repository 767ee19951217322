"""A real target's add-ons: the self-distilled corpus, the cached teacher, chat-template
training data, Medusa heads sharing the LM head, Kangaroo's acceptance loss, and the whole
`prepare NAME --addons` pipeline on a tiny stand-in target (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from conftest import write_questions
from specbench_cli.methods import METHODS
from specbench_cli.bench.prompts import build_prompt_ids
from specbench_cli.train.data import Example, batches, encode, load_examples
from specbench_cli.train.teacher import Batch, CachedTeacher, LiveTeacher

CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def greedy(engine, ids, n):
    return METHODS["vanilla"](engine, {2}).generate(ids, n).tokens


def test_the_corpus_prompts_are_deterministic_and_cover_six_shapes():
    from specbench_cli.models.corpus import SUBTASK_SHAPES, make_prompts, topics
    assert len(topics()) > 50          # CPython's help topics, prose paragraphs
    first, again, other = make_prompts(3, 0), make_prompts(3, 0), make_prompts(3, 1)
    assert first == again and first != other
    assert [p["subtask"] for p in first[:6]] == list(SUBTASK_SHAPES)
    assert len(first) == 18 and len(first[0]["turns"]) == 2
    assert all(len(p["turns"]) == 1 for p in first if p["subtask"] != "mt_bench")


def test_chat_template_examples_are_what_a_run_decodes_from(tiny_engine):
    engine, tok = tiny_engine
    tok.chat_template = CHAT
    try:
        pairs = [("Hi there", "Hello."), ("And now?", "Bye!")]
        ex = encode(tok, pairs, 1000, "chat")
        prompt = build_prompt_ids(tok, "chat", ["Hi there", "And now?"], ["Hello."])
        last = tok("Bye!", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ex.ids == prompt + last
        # Masked in: each answer and its EOS, nothing of the prompts.
        first = tok("Hello.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        answered = [i for i, m in zip(ex.ids, ex.assistant) if m]
        assert answered == first + last
        assert sum(ex.assistant) == len(first) + len(last)
    finally:
        tok.chat_template = None


def test_the_cached_teacher_says_what_the_live_one_says(tiny_engine):
    engine, tok = tiny_engine
    examples = [Example(list(range(3, 3 + n)), [False] * 4 + [True] * (n - 4)) for n in (9, 14, 11)]
    cached = CachedTeacher(engine, examples, layers=[1, 2], top_k=engine.config.vocab_size)
    live = LiveTeacher(engine)
    batch = next(batches(examples, 2, 0))
    # Real positions only: right padding is never attended to nor trained on.
    real = torch.zeros_like(batch.mask)
    for i, row in enumerate(batch.rows):
        real[i, :len(examples[row].ids)] = True
    for layer in (1, 2):
        torch.testing.assert_close(cached.hidden(batch, layer)[real],
                                   live.hidden(batch, layer)[real], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(cached.features(batch)[real], live.features(batch)[real],
                               atol=1e-2, rtol=1e-2)          # fp16 storage
    student = torch.randn(int(batch.mask.sum()), engine.config.vocab_size)
    dense, top = live.distribution(batch), cached.distribution(batch)
    assert dense.top1().tolist() == top.top1().tolist()
    # With k = the whole vocabulary the top-k cross-entropy is the full one.
    assert float(top.soft_cross_entropy(student)) == pytest.approx(
        float(dense.soft_cross_entropy(student)), rel=1e-3)
    assert float(top.acceptance(student)) == pytest.approx(float(dense.acceptance(student)),
                                                           rel=1e-3)
    with pytest.raises(KeyError):
        cached.hidden(batch, 3)


@pytest.fixture
def corpus(tiny_engine, tmp_path) -> Path:
    engine, tok = tiny_engine
    answer = tok.decode(greedy(engine, build_prompt_ids(tok, "vicuna_v1.1", ["Hello"], []), 40))
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"turns": [q], "answers": [answer]}) + "\n"
                            for q in ("Hello", "Tell me more", "Why?", "Go on")))
    return path


def test_medusa_heads_sharing_the_lm_head_save_only_their_resblocks(tiny_engine, corpus,
                                                                    tmp_path):
    from safetensors import safe_open

    from specbench_cli.train.medusa import train_medusa
    engine, tok = tiny_engine
    out = tmp_path / "heads"
    train_medusa(engine, tok, [corpus], out, num_heads=3, share_lm_head=True, steps=5,
                 batch_size=2, max_len=256, console=quiet())
    with safe_open(str(out / "medusa_lm_head.safetensors"), "pt") as f:
        names = sorted(f.keys())
    assert names == [f"{k}.0.linear.{p}" for k in range(3) for p in ("bias", "weight")]
    assert json.loads((out / "config.json").read_text())["shared_lm_head"] is True
    medusa = METHODS["medusa"](engine, {2}, tok, heads=str(out), tree="budget16")
    hidden = engine.config.hidden_size
    assert medusa.parameter_overhead()["params"] == 3 * (hidden * hidden + hidden)
    ids = build_prompt_ids(tok, "vicuna_v1.1", ["Tell me a story"], [])
    assert medusa.generate(ids, 40).tokens == greedy(engine, ids, 40)


def test_kangaroo_trains_on_expected_acceptance_too(tiny_engine, corpus, tmp_path):
    from specbench_cli.errors import SpecbenchError
    from specbench_cli.train.kangaroo import train_kangaroo
    engine, tok = tiny_engine
    metrics = train_kangaroo(engine, tok, [corpus], tmp_path / "a", exit_layer=1, steps=4,
                             batch_size=2, max_len=256, loss="acceptance", console=quiet())
    assert 0 <= metrics["accept"] <= 1 and metrics["loss"] == pytest.approx(
        1 - metrics["accept"], abs=0.2)         # the last step's loss, before its update
    assert json.loads((tmp_path / "a/config.json").read_text())["specbench"]["loss"] == "acceptance"
    log = [json.loads(l) for l in (tmp_path / "a/training_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4] and "accept" in log[0]
    with pytest.raises(SpecbenchError, match="loss 'tv': choose one of ce, acceptance"):
        train_kangaroo(engine, tok, [corpus], tmp_path / "b", steps=1, loss="tv")


def test_prepare_addons_builds_everything_and_run_picks_it_up(tiny_model_dir, tmp_path,
                                                             monkeypatch):
    """The whole pipeline on a stand-in named target: corpus, teacher, five add-ons, then a run
    that names only the target and the methods, every one equal to vanilla."""
    from specbench_cli import api
    from specbench_cli.models import target_addons, targets
    from specbench_cli.methods import METHODS
    from specbench_cli.methods.base import TargetAddon
    recipe = {"corpus": {"per_subtask": 2, "seed": 0, "max_new_tokens": 12, "batch_size": 4},
              "max_len": 256, "teacher": {"top_k": 8, "layers": [1]}}
    settings = {"kangaroo": {"exit_layer": 1, "steps": 3, "batch_size": 2},
                "medusa": {"num_heads": 2, "share_lm_head": True, "steps": 3, "batch_size": 2},
                "eagle": {"steps": 3, "batch_size": 2},
                "sps": {"hidden_size": 32, "layers": 1, "steps": 3, "batch_size": 2},
                "rest": {}}
    monkeypatch.setitem(target_addons.RECIPES, "tiny", recipe)
    for method, values in settings.items():     # smollm2's run options, tiny settings
        monkeypatch.setitem(METHODS[method].target_addons, "tiny", TargetAddon(
            values, METHODS[method].target_addons["smollm2"].options))
    monkeypatch.setitem(targets.TARGETS, "tiny", targets.TARGETS["smollm2"])
    for module in (targets, target_addons):     # the target's folder, wherever it is asked for
        monkeypatch.setattr(module, "target_folder", lambda name, **kw: tiny_model_dir)
    monkeypatch.setenv("SPECBENCH_HOME", str(tmp_path / "home"))
    assert target_addons.built_addons("tiny") is None
    built = target_addons.prepare_addons("tiny", console=quiet())
    assert set(built.addons) == {"kangaroo", "medusa", "eagle", "sps", "rest"}
    rows = [json.loads(l) for l in built.corpus.read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["answers"]) == len(r["turns"]) for r in rows)
    meta = json.loads((built.root / "corpus.json").read_text())
    assert "pydoc_data.topics" in meta["source"] and meta["template"] == "vicuna_v1.1"
    again = target_addons.built_addons("tiny")
    assert again is not None and again.addons == built.addons
    # Another setting for one add-on: that add-on is stale, the rest (and the corpus) are not.
    corpus_made = built.corpus.stat().st_mtime_ns
    monkeypatch.setitem(METHODS["rest"].target_addons, "tiny", TargetAddon(
        {"note": "rebuilt"}, METHODS["rest"].target_addons["smollm2"].options))
    assert target_addons.built_addons("tiny") is None
    rebuilt = target_addons.prepare_addons("tiny", console=quiet())
    assert set(rebuilt.timings) == {"rest"} and rebuilt.root == built.root
    assert built.corpus.stat().st_mtime_ns == corpus_made
    assert target_addons.built_addons("tiny") is not None
    qfile = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "qa", "turns": ["Who wrote Hamlet?"]},
        {"question_id": 2, "category": "rag", "turns": ["Paris is in France. Where is Paris?"]}])
    # fp32: `auto` would time fp32 against bf16 (conftest.pinned_run), and equality is asserted
    plan = api.plan_run(model="tiny", bench=str(qfile), methods="kangaroo,medusa,eagle,sps,rest",
                        max_new_tokens=24, warmup=0, dtype="fp32", out=tmp_path / "run",
                        console=quiet())
    assert plan.config.method_options["medusa"]["heads"] == str(built.addons["medusa"])
    out = api.execute(plan, quiet())
    frame = api.results(out)
    assert (frame["equal"] == 1.0).all(), frame
    # check-sampling resolves methods and add-ons exactly as the run did.
    from specbench_cli.run import sampling_check
    seen = {}

    def capture(methods, *args, **kwargs):
        seen.update(methods)
        return []
    monkeypatch.setattr(sampling_check, "check_sampling", capture)
    api.check_sampling(model="tiny", methods="vanilla,kangaroo,medusa,eagle,sps,rest",
                       samples=10, console=quiet())
    for name in ("kangaroo", "medusa", "eagle", "sps", "rest"):
        for option, value in plan.config.method_options[name].items():
            assert str(seen[name].options[option]) == str(value), (name, option)
