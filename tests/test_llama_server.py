"""Endpoint rows against real servers: llama.cpp's llama-server, built from the source vendored in
the package index's llama-cpp-python sdist (specbench_cli/llamacpp.py; ~10 min on 2 cores, once
per $SPECBENCH_HOME), serving SmolLM2 three ways: plain decoding, n-gram speculation, and its
Q4_1 file drafting for the bf16 file. Marked `llama_server`: `.ci/run` runs it; the quick suite
covers the protocol with tests/fake_openai.py instead."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from conftest import OFFICIAL_QUESTIONS, write_questions
from specbench_cli.cli import app

pytestmark = pytest.mark.llama_server

NGRAM = ("--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
         "--spec-ngram-simple-size-m", "10")


def test_three_live_llama_servers_as_endpoint_rows(tmp_path):
    from contextlib import ExitStack

    from specbench_cli.llamacpp import build_llamacpp, cache_root, llama_server, same_bytes_gguf
    from specbench_cli.models.targets import TARGETS, fetch_gguf
    tools = build_llamacpp(cache_root(), os.cpu_count())
    assert tools is not None, "llama-server could not be built (see the line above)"
    quantized = fetch_gguf(TARGETS["smollm2"])
    target = same_bytes_gguf(quantized, cache_root(), "bf16")
    bench = OFFICIAL_QUESTIONS if OFFICIAL_QUESTIONS.exists() else write_questions(
        tmp_path / "q.jsonl", [
            {"question_id": 1, "category": "summarization", "turns": [
                "Summarize: The cat sat on the mat. The cat was happy on the mat. The mat was "
                "red, and the cat liked the red mat."]},
            {"question_id": 2, "category": "qa", "turns": ["What is the capital of France?"]},
            {"question_id": 3, "category": "rag", "turns": [
                "Context: Paris is the capital of France. It lies on the Seine.\n\nQuestion: "
                "On which river does the capital of France lie?"]}])
    out = tmp_path / "run"
    servers = {"vanilla": (), "ngram": NGRAM,
               "draft": ("--spec-type", "draft-simple", "--spec-draft-model", str(quantized),
                         "--spec-draft-n-max", "5")}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(llama_server(
            tools, target, *flags, parallel=4, log=tmp_path / f"{name}.log"))
            for name, flags in servers.items()}
        result = CliRunner().invoke(app, [
            "run", *[a for name, url in urls.items() for a in ("--endpoint", f"{name}={url}")],
            "--bench", str(bench), "--tasks", "summarization,qa,rag", "--limit", "1",
            "--max-new-tokens", "64", "--concurrency", "1,4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["methods"]
    assert list(summary) == ["vanilla", "ngram", "draft", "vanilla+b4", "ngram+b4", "draft+b4"]
    for name in ("ngram", "draft"):
        row = summary[name]
        assert row["latency"]["counter_sources"] == ["llama.cpp timings"], name
        assert row["mean_accepted_overall"] > 1.0, name          # from llama.cpp's counters
        assert row["equal_to_vanilla"]["compared"] == 3         # text equality was measured
        assert row["speedup"].keys() == {"summarization", "qa", "rag"}
    assert summary["draft+b4"]["aggregate_tokens_per_s"] > 0
    statistics = {s["label"]: s["value"] for s in summary["ngram"]["statistics"]}
    assert statistics["TTFT ms"] > 0 and statistics["decode tok/s"] > 0
    # the report a user reads
    assert "endpoint details" in result.output and "llama.cpp timings" in result.output
