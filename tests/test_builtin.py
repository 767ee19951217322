"""The built-in mini benchmark: generator, tokenizer, encoding, and a tiny end-to-end build."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
import torch

from specbench_cli.models.builtin import BuiltinAssets, prepare_builtin, tiny_recipe
from specbench_cli.models.builtin.model import collate, encode_conversations, shared_prefix_len
from specbench_cli.models.builtin.quality import final_number, key_facts, score, word_accuracy
from specbench_cli.models.builtin.recipe import Recipe
from specbench_cli.models.builtin.tasks_gen import RAG_FACTS, SUBTASKS, generate, question_records
from specbench_cli.models.builtin.tokenizer import conversation_text, train_tokenizer
from specbench_cli.bench.prompts import build_prompt_ids

MT_CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


@pytest.fixture(scope="module")
def data():
    return generate(seed=0, n_train=dict.fromkeys(SUBTASKS, 300), n_heldout=30)


@pytest.fixture(scope="module")
def tokenizer(data):
    return train_tokenizer([conversation_text(c.turns, c.answers) for c in data.train], vocab_size=800)


def by_subtask(convs, subtask):
    return [c for c in convs if c.subtask == subtask]


# ---------------------------------------------------------------- generator
def test_generator_is_deterministic(data):
    again = generate(seed=0, n_train=dict.fromkeys(SUBTASKS, 300), n_heldout=30)
    assert again.train == data.train and again.heldout == data.heldout
    other = generate(seed=1, n_train=dict.fromkeys(SUBTASKS, 300), n_heldout=30)
    assert other.heldout != data.heldout


def test_question_file_fields(data):
    records = question_records(data.heldout)
    ids = [r["question_id"] for r in records]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    counts = Counter(c.subtask for c in data.heldout)
    assert set(counts) == set(SUBTASKS) and min(counts.values()) >= 20
    for r, c in zip(records, data.heldout):
        assert set(r) == {"question_id", "category", "turns", "reference"}
        assert len(r["turns"]) == len(r["reference"]) == (2 if c.subtask == "mt_bench" else 1)
        assert all(isinstance(t, str) and t for t in r["turns"] + r["reference"])
        if c.subtask == "mt_bench":
            assert r["category"] in MT_CATEGORIES
        else:
            assert r["category"] == c.subtask
    json.dumps(records)


def test_heldout_questions_are_not_training_questions(data):
    train_first = {c.turns[0] for c in data.train}
    assert not any(c.turns[0] in train_first for c in data.heldout)


def test_copy_tasks_copy_and_translation_does_not(data):
    for c in by_subtask(data.heldout, "summarization") + by_subtask(data.heldout, "rag"):
        assert c.answers[0] in c.turns[0]
    for c in by_subtask(data.heldout, "summarization"):
        assert c.turns[0].startswith("Summarize: ") and c.answers[0].count(".") >= 2
    # Translation answers share (almost) no words with the Zorbish prompt.
    overlap = [len(set(c.answers[0].lower().split()) & set(c.turns[0].lower().split()))
               for c in by_subtask(data.heldout, "translation")]
    assert sum(overlap) / len(overlap) < 0.5


def test_qa_answer_not_in_question_and_math_is_stepwise(data):
    for c in by_subtask(data.heldout, "qa"):
        assert c.answers[0].rstrip(".").split()[-1] not in c.turns[0]
    for c in by_subtask(data.heldout, "math_reasoning"):
        answer = c.answers[0]
        assert "=" in answer and final_number(answer) is not None
        # The last worked step's result is the final answer.
        assert answer.split("=")[-1].split()[0] == final_number(answer)


def test_mt_bench_second_turn_reworks_the_first(data):
    for c in by_subtask(data.heldout, "mt_bench"):
        assert c.turns[1] in ("Rewrite your previous answer in reverse order.", "Make it shorter.")
        assert c.answers[1] != c.answers[0]


# ---------------------------------------------------------------- tokenizer and encoding
def test_tokenizer_round_trip_and_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Translate Zorbish to English: Qwx ünïcode 123 — fine."
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text
    assert loaded(text)["input_ids"][0] == loaded.bos_token_id  # BOS by default, like Llama
    assert (loaded.bos_token, loaded.eos_token) == ("<s>", "</s>")
    assert loaded("a</s>b", add_special_tokens=False)["input_ids"].count(loaded.eos_token_id) == 1


def test_training_ids_match_the_runner_prompt(data, tokenizer):
    """Every turn is trained on exactly the ids `build_prompt_ids` gives at inference."""
    convs = by_subtask(data.heldout, "mt_bench")[:5] + by_subtask(data.heldout, "rag")[:5]
    for c, (ids, mask) in zip(convs, encode_conversations(tokenizer, [(c.turns, c.answers) for c in convs])):
        for k in range(len(c.turns)):
            prompt = build_prompt_ids(tokenizer, "vicuna_v1.1", list(c.turns[: k + 1]), list(c.answers[:k]))
            answer = tokenizer(" " + c.answers[k], add_special_tokens=False)["input_ids"]
            assert ids[: len(prompt)] == prompt
            span = slice(len(prompt), len(prompt) + len(answer) + 1)
            assert ids[span] == answer + [tokenizer.eos_token_id]
            assert all(mask[span]) and not any(mask[len(prompt) - 1: len(prompt)])
        assert len(mask) == len(ids) and sum(mask) == sum(
            len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) + 1 for a in c.answers)


def test_shared_prefix_loss_equals_plain_loss(data, tokenizer):
    from specbench_cli.models.builtin.model import answer_loss, make_model

    examples = encode_conversations(tokenizer, [(c.turns, c.answers) for c in data.train[:6]])
    prefix = shared_prefix_len(examples)
    assert prefix > 20  # BOS + the system text at least
    torch.manual_seed(0)
    model = make_model(tiny_recipe(), tokenizer)
    ids, target = collate(examples, tokenizer.pad_token_id)
    torch.testing.assert_close(answer_loss(model, ids, target, prefix), answer_loss(model, ids, target))


def test_scores():
    for templates in RAG_FACTS.values():
        for fact, _ in templates:
            assert key_facts("rag", fact.format(p="Vorn", v="Val")) == ["vorn", "val"]
    assert key_facts("qa", "Mira Tolvan lives in Brask.") == ["brask"]
    assert word_accuracy("The old dog saw a cat.", "The old dog saw a cat.") == 1.0
    assert word_accuracy("The dog saw.", "The old dog saw a cat.") < 0.5
    assert score("summarization", ["A b. C d."], ["A b. E f."]) == 0.5
    assert score("math_reasoning", ["x = 3. #### 3"], ["#### 3"]) == 1.0


def test_recipe_hash_changes_with_any_knob():
    assert Recipe().hash() == Recipe().hash()
    assert Recipe(seed=1).hash() != Recipe().hash()
    assert Recipe(steps=1).hash() != Recipe().hash()


# ---------------------------------------------------------------- end to end (tiny recipe)
def test_tiny_build_loads_and_is_reused(tmp_path):
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(file=io.StringIO(), width=120)
    assets = prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console)
    assert isinstance(assets, BuiltinAssets) and not assets.reused
    assert (assets.root / "done.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.bos_token_id == tok.bos_token_id
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == tiny_recipe().num_layers
    lines = assets.question_file.read_text().splitlines()
    assert len(lines) == 6 * tiny_recipe().n_heldout
    assert json.loads(assets.train_file.read_text().splitlines()[0]).keys() == {"turns", "answers", "category"}
    assert set(assets.quality["subtasks"]) == set(SUBTASKS) and assets.quality["loss"] > 0
    assert set(assets.hashes) == {"tokenizer.json", "model.safetensors"}

    again = prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console)
    assert again.reused and again.hashes == assets.hashes

    rebuilt = prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=console, force=True)
    assert not rebuilt.reused and rebuilt.hashes == assets.hashes  # deterministic for a seed


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from rich.console import Console

    from specbench_cli.models.builtin import build

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "train", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_builtin(home=tmp_path, recipe=tiny_recipe(), console=Console(file=io.StringIO()))
    assert list(tmp_path.iterdir()) == []
