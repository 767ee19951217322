"""The memory-wall profile and the cost model: exact numbers on hand-made inputs, the profile
command and a --breakdown run end to end on a tiny model."""

import json

import pytest
from typer.testing import CliRunner

from specbench_cli.cli import app
from specbench_cli.analysis.costmodel import explain, interpolated_cost, predict
from specbench_cli.run.profile import matmul_flops_per_token, profile_engine, weight_bytes

from conftest import TINY, make_model_folder, write_questions


def test_weight_bytes_count_the_head_and_skip_a_gathered_embedding(tiny_engine, tmp_path):
    engine, _ = tiny_engine
    h, m, v, layers = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], \
        TINY["num_hidden_layers"]
    per_layer = 4 * h * h + 3 * h * m + 2 * h          # q k v o (4 heads, no GQA), MLP, 2 norms
    assert weight_bytes(engine) == 4 * (layers * per_layer + h + v * h)      # + norm + head
    assert matmul_flops_per_token(engine) == 2 * (layers * (4 * h * h + 3 * h * m) + v * h)
    from specbench_cli.engine.load import load_engine
    tied, _, _ = load_engine(str(make_model_folder(tmp_path / "tied", tie_word_embeddings=True)),
                             dtype="fp32", with_tokenizer=False)      # 4 bytes a weight
    assert weight_bytes(tied) == 4 * (layers * per_layer + h + v * h)        # the head is it


PROFILE = {"latency_seconds": {"100": {"1": 0.010, "2": 0.015, "4": 0.020},
                               "1000": {"1": 0.020, "2": 0.040, "4": 0.080}}}


def test_interpolated_cost_is_linear_between_sizes_at_the_nearest_context():
    assert interpolated_cost(PROFILE, 1) == 1.0
    assert interpolated_cost(PROFILE, 3) == pytest.approx(1.75)
    assert interpolated_cost(PROFILE, 8) == pytest.approx(4.0)      # past the table: linear in n
    assert interpolated_cost(PROFILE, 3, context=900) == pytest.approx(3.0)


def summary(with_breakdown: bool, block_sizes=None):
    # Blocks of 3 tokens by default (mean 3); vanilla's are 1 token.
    def method(mat, block, speedup, ms, prefill, draft=0.0, rest=0.0):
        bd = {"ms_per_step": {"prefill": 0.0, "draft": draft, "verify": 10.0, "rest": rest},
              "ms_per_token": {"prefill": prefill}}
        return {"mean_accepted_overall": mat, "mean_verified": block, "speedup_overall": speedup,
                "ms_per_token": ms, "block_sizes": block_sizes or {str(int(block)): 10},
                "breakdown": bd if with_breakdown else None}
    return {"baseline": "vanilla", "methods": {
        "vanilla": method(1.0, 1.0, 1.0, 13.0, prefill=2.0, rest=1.0),
        "pld": method(2.0, 3.0, 1.1, 10.0, prefill=1.0, draft=2.5, rest=1.0)}}


def test_the_cost_model_says_whether_the_engine_or_the_device_limits_a_method():
    # c(3) = 1.75 measured; the roofline says 1.0 up to 2 tokens, 1.5 at 4: c*(3) = 1.25
    roofed = {**PROFILE, "roofline_cost": {"100": {"1": 1.0, "2": 1.0, "4": 1.5}}}
    pld = predict(summary(False), roofed)["pld"]
    assert pld["roofline_cost"] == pytest.approx(1.25)
    assert pld["predicted_at_roofline"] == pytest.approx(2.0 / 1.25)
    assert pld["limited_by"] == "the engine"            # 1.75 > 1.3 × 1.25
    assert pld["why"].endswith("at the device's roofline verifying would cost 1.25 steps "
                               "(predicted 1.60x): the engine limits it")
    near = {**PROFILE, "roofline_cost": {"100": {"1": 1.0, "2": 1.4, "4": 1.8}}}
    assert predict(summary(False), near)["pld"]["limited_by"] == "the device"   # 1.75 vs 1.6
    assert "limited_by" not in predict(summary(False), PROFILE)["pld"]           # no roofline


def test_predicted_speedup_from_mat_block_cost_and_draft_cost():
    # Memory wall only: MAT / c(3) = 2 / 1.75; pooled measured = 13 / 10 ms per token.
    plain = predict(summary(False), PROFILE)
    assert plain["pld"]["predicted"] == pytest.approx(2 / 1.75)
    assert plain["pld"]["measured_pooled"] == pytest.approx(1.3)
    assert plain["vanilla"]["predicted"] == pytest.approx(1.0)
    # With a breakdown, in 10 ms steps: vanilla π 0.2 + 1 + ρ 0.1 = 1.3 a token; the method
    # π 0.1 + (c 1.75 + δ 0.25 + ρ 0.1) / MAT 2 = 1.15.
    full = predict(summary(True), PROFILE)["pld"]
    assert (full["prefill_cost"], full["draft_cost"], full["rest_cost"]) == \
        pytest.approx((0.1, 0.25, 0.1))
    assert full["predicted"] == pytest.approx(1.3 / 1.15)
    assert full["break_even"] == pytest.approx(2.1 / 1.2)
    assert full["why"] == ("verifying 3.0 tokens costs 1.75 steps: MAT must exceed 1.75 to gain "
                           "(it is 2.00, gains)")
    assert predict(summary(True), PROFILE)["vanilla"]["predicted"] == pytest.approx(1.0)


def test_verify_cost_averages_over_the_block_sizes_and_scales_by_layer_share():
    mixed = predict(summary(False, block_sizes={"1": 1, "4": 1}), PROFILE)["pld"]   # mean 2.5
    assert mixed["verify_cost"] == pytest.approx((1.0 + 2.0) / 2)   # not c(mean 2.5) = 1.625
    half = predict(summary(False), PROFILE, infos={"pld": {"verify_layer_share": 0.5}})["pld"]
    assert half["verify_cost"] == pytest.approx(0.875)


def test_explanation_names_the_largest_term():
    assert explain(1.5, 11, 1.7, 0.0, 0.02, 1.72) == (
        "verifying 11.0 tokens costs 1.70 steps: MAT must exceed 1.72 to gain (it is 1.50, "
        "cannot gain)")
    assert explain(4.0, 5, 1.2, 1.7, 0.1, 3.0).startswith("drafting costs 1.70 of a step")


def test_profile_engine_measures_every_point(tiny_engine):
    engine, _ = tiny_engine
    result = profile_engine(engine, contexts=(8, 32), sizes=(1, 2, 4), repeats=2)
    assert set(result["latency_seconds"]) == {"8", "32"}
    assert all(set(t) == {"1", "2", "4"} and min(t.values()) > 0
               for t in result["latency_seconds"].values())
    assert result["bandwidth"]["buffer_bytes"] >= 512 << 20
    assert result["floor_seconds"] == pytest.approx(
        result["weight_bytes"] / result["bandwidth"]["bytes_per_s"])
    # timed side by side with the probe, round by round: near floor / the one-token latency
    bw = result["bandwidth"]
    assert bw["range"][0] <= bw["bytes_per_s"] <= bw["range"][1] and bw["rounds"] == 9
    assert 0 < result["achieved_bandwidth_share"] < 5
    assert result["relative_cost"]["1"] == 1.0
    # the roofline: the device's product rate, and c*(n) >= 1 growing with n past the step
    rate = result["product_rate"]["flops_per_s"]
    assert rate > 0 and result["flops_per_token"] == matmul_flops_per_token(engine)
    for context, roof in result["roofline_cost"].items():
        t1 = result["latency_seconds"][context]["1"]
        assert roof == {n: max(t1, int(n) * result["flops_per_token"] / rate) / t1
                        for n in ("1", "2", "4")}


def test_the_roofline_is_one_step_until_the_products_take_longer():
    from specbench_cli.run.profile import roofline_cost
    # 10 ms step; 0.27 GFLOP a token at 195 GFLOP/s = 1.385 ms a token: 8 tokens 11.1 ms
    roof = roofline_cost(0.010, 270_000_000, 195e9, (1, 4, 7, 8, 16))
    assert roof["1"] == roof["4"] == roof["7"] == 1.0
    assert roof["8"] == pytest.approx(8 * 0.27 / 195 / 0.010)
    assert roof["16"] == pytest.approx(2 * roof["8"])


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_profile_command_writes_json_and_plot_and_refuses_bad_sizes(tiny_model_dir, tmp_path):
    out = tmp_path / "prof"
    result = invoke("profile", "--model", tiny_model_dir, "--contexts", "16,5000", "--sizes",
                    "1,2", "--repeats", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "context 5000 skipped" in result.output and "achieves" in result.output
    assert "roofline ×" in result.output and "÷roof" in result.output
    doc = json.loads((out / "profile.json").read_text())
    assert doc["contexts"] == [16] and doc["dtype"] in ("fp32", "bf16") and doc["model"]
    # how the products ran and why in this dtype, in the file and on screen
    assert "matrix-product kernels by block size" in result.output
    assert "decoder layers" in result.output and "weights" in result.output
    products = {g: c for g, c in doc["kernels"].items() if g not in ("decoder layers", "weights")}
    assert products and all(c.startswith("1:") and "64:" in c for c in products.values())
    # auto takes the faster of fp32 and bf16 on a CPU with bf16 units (timed), else fp32
    assert doc["dtype_choice"].startswith(f"auto: {doc['dtype']}")
    assert f"dtype: {doc['dtype']} (auto" in result.output
    assert (out / "profile.png").stat().st_size > 0 and (out / "profile.svg").exists()
    for args, message in ((["--sizes", "2,4"], "--sizes must include 1"),
                          (["--sizes", "1,x"], "expected comma-separated integers"),
                          (["--contexts", "9000"], "no context fits the model's 4096 positions")):
        bad = invoke("profile", "--model", tiny_model_dir, *args)
        assert bad.exit_code == 2 and message in bad.stderr, bad.output


def test_breakdown_run_splits_time_and_predicts(tiny_model_dir, tmp_path):
    qfile = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "summarization",
         "turns": ["Summarize: the cat sat on the mat. the cat sat on the mat."]},
        {"question_id": 2, "category": "qa", "turns": ["Who wrote Hamlet? Who wrote it?"]}])
    out = tmp_path / "run"
    result = invoke("run", "--model", tiny_model_dir, "--bench", qfile, "--max-new-tokens", 24,
                    "--warmup", 0, "--breakdown", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["breakdown"] is True
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["methods"].items():
        bd = m["breakdown"]
        assert m["equal_to_vanilla"]["share"] == 1.0
        assert bd["seconds"]["verify"] > 0 and bd["seconds"]["prefill"] > 0
        assert bd["seconds"]["rest"] >= -1e-3          # phases lie inside the wall time
        assert sum(bd["seconds"].values()) == pytest.approx(bd["wall_seconds"])
        assert m["mean_verified"] >= 1.0
        assert name in summary["cost_model"]
    assert summary["methods"]["vanilla"]["mean_verified"] == 1.0
    assert summary["methods"]["vanilla"]["breakdown"]["seconds"]["draft"] == 0
    assert (out / "profile.json").exists()
    assert "where the time goes" in result.output and "MAT must exceed" in result.output
    plots = invoke("report", out, "--plots")
    assert plots.exit_code == 0 and (out / "plots" / "time_by_phase.png").exists()
