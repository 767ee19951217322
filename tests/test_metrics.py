"""Spec-Bench's definitions on hand-made answer lines, checked to the exact number."""

import pytest

from specbench_cli.analysis.metrics import (MetricsError, equality, first_difference, method_stats,
                                   summarize)


def line(qid, category, new_tokens, wall_time, accept, tokens, repeat=0):
    return {"question_id": qid, "category": category, "repeat": repeat, "token_ids": tokens,
            "choices": [{"new_tokens": new_tokens, "wall_time": wall_time,
                         "accept_lengths": accept}]}


def test_speedup_mat_ctar_and_equality_exact():
    vanilla = [line(1, "qa", [10], [1.0], [1] * 10, [[1]]),
               line(2, "qa", [20], [4.0], [1] * 20, [[2]]),
               line(3, "rag", [10], [2.0], [1] * 10, [[3]])]
    fast = [line(1, "qa", [10], [0.5], [3, 3, 4], [[1]]),
            line(2, "qa", [20], [2.0], [1, 2, 5, 2, 5, 5], [[9]]),
            line(3, "rag", [10], [1.0], [5, 5], [[3]])]
    s = summarize({"vanilla": vanilla, "pld": fast})
    pld = s["methods"]["pld"]
    # qa: vanilla throughputs 10 and 5 (mean 7.5); pld 20 and 10 (mean 15) -> 2.0
    assert pld["speedup"]["qa"] == pytest.approx(2.0)
    # overall: vanilla mean(10, 5, 5) = 20/3; pld mean(20, 10, 10) = 40/3 -> 2.0
    assert pld["speedup_overall"] == pytest.approx(2.0)
    # step-weighted: 40 tokens over 11 steps, not the mean of per-question means
    assert pld["mean_accepted_overall"] == pytest.approx(40 / 11)
    assert pld["mean_accepted"]["qa"] == pytest.approx(30 / 9)
    assert pld["ctar"]["1"] == pytest.approx(10 / 11) and pld["ctar"]["4"] == pytest.approx(5 / 11)
    eq = pld["equal_to_vanilla"]
    assert (eq["share"], eq["compared"], eq["first_diff"]) == (pytest.approx(2 / 3), 3, 2)
    # No gaps recorded (older or imported answers): a difference is a mismatch.
    assert (eq["near_tie"], eq["mismatch"], eq["first_mismatch"]) == (0, pytest.approx(1 / 3), 2)
    assert s["methods"]["vanilla"]["mean_accepted_overall"] == 1.0
    assert s["subtasks"] == ["qa", "rag"]


def test_repeats_average_per_repeat_speedups():
    vanilla = [line(1, "qa", [10], [1.0], [1] * 10, [[1]], r) for r in (0, 1)]
    fast = [line(1, "qa", [10], [0.5], [10], [[1]], 0), line(1, "qa", [10], [0.25], [10], [[1]], 1)]
    assert summarize({"vanilla": vanilla, "x": fast})["methods"]["x"]["speedup_overall"] == 3.0


def test_no_vanilla_is_an_error():
    with pytest.raises(MetricsError, match="no vanilla answers"):
        summarize({"pld": [line(1, "qa", [1], [1.0], [1], [[1]])]})


def test_first_difference_turn_and_position():
    assert first_difference([[1, 2, 3], [4]], [[1, 2, 3], [4]]) is None
    assert first_difference([[1, 2, 3], [4]], [[1, 9, 3], [5]]) == (0, 1)
    assert first_difference([[1, 2], [4, 5]], [[1, 2], [4, 6, 7]]) == (1, 1)
    assert first_difference([[1, 2]], [[1, 2, 3]]) == (0, 2)     # one stopped sooner


def gapped(qid, tokens, gaps):
    row = line(qid, "qa", [len(t) for t in tokens], [1.0] * len(tokens), [1], tokens)
    row["stats"] = [{"top2_gap": g} for g in gaps]
    return row


def test_differences_split_into_near_ties_and_mismatches_by_vanilla_gap():
    vanilla = [gapped(1, [[5, 6, 7]], [[3.0, 0.01, 2.0]]),
               gapped(2, [[5, 6, 7]], [[3.0, 0.01, 2.0]]),
               gapped(3, [[5, 6], [8, 9]], [[3.0, 1.0], [0.2, 4.0]]),
               gapped(4, [[5]], [[1.0]])]
    method = [line(1, "qa", [3], [1.0], [1], [[5, 8, 1]]),        # flips where the gap is 0.01
              line(2, "qa", [3], [1.0], [1], [[5, 6, 1]]),        # flips where the gap is 2.0
              line(3, "qa", [2, 2], [1.0, 1.0], [1], [[5, 6], [1, 9]]),   # turn 2, gap 0.2
              line(4, "qa", [1], [1.0], [1], [[5]])]
    eq = equality(method, vanilla, tolerance=0.25)
    assert (eq["share"], eq["near_tie"], eq["mismatch"]) == (0.25, 0.5, 0.25)
    assert (eq["first_diff"], eq["first_mismatch"]) == (1, 2)
    assert [(d["question_id"], d["turn"], d["position"], d["gap"], d["near_tie"])
            for d in eq["differences"]] == [(1, 0, 1, 0.01, True), (2, 0, 2, 2.0, False),
                                            (3, 1, 0, 0.2, True)]
    strict = equality(method, vanilla, tolerance=1e-4)
    assert (strict["near_tie"], strict["mismatch"]) == (0, 0.75)


def test_declared_statistics_sum_counters_over_turns():
    rows = [{"stats": [{"rounds": 1, "hits": 1, "drafted": 3}, {"rounds": 2, "hits": 0}]},
            {"stats": [{"rounds": 1, "hits": 1, "drafted": 5}]}]
    share = {"label": "hit rate", "count": "hits", "per": "rounds", "scale": 100, "unit": "%"}
    absent = {"label": "η-stop", "count": "stopped_by_threshold", "per": "rounds"}
    totals, values = method_stats(rows, [share, absent])
    assert totals["mean_draft_length"] == 2.0                   # 8 drafted in 4 rounds
    assert values == [{"label": "hit rate", "value": 50.0, "unit": "%", "help": ""},
                      {"label": "η-stop", "value": None, "unit": "", "help": ""}]
    assert method_stats(rows) == (totals, [])
    vanilla = [line(1, "qa", [1], [1.0], [1], [[1]])]
    with pytest.raises(MetricsError, match="methods.vanilla.statistics: .* needs a label"):
        summarize({"vanilla": vanilla}, declared={"vanilla": [{"label": "x"}]})
