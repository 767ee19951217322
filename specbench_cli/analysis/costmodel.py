"""Predicted speedup from the memory-wall cost model, next to the measured one.

Everything is in units of one vanilla step (a one-token forward). A method's verification
forward over a block of b tokens costs c(b): the profile's latency of b tokens over that of one,
times the share of layers the verification runs (Kangaroo verifies with the deep layers only),
averaged over the block sizes the run actually verified (c of the mean block would overrate a
method whose blocks are 1 or 11 tokens, like PLD's). With a profile that has the device's
roofline c*(b) (`specbench profile`), the same average of c* says what verification would cost
if the engine's products ran at the device's rate: where c̄ exceeds it by more than
ENGINE_MARGIN, the engine, not the device, limits the method. Per step it also drafts (δ) and does other
work (ρ: acceptance, cache moves), and it commits MAT tokens. Per committed token, then:

    vanilla: π_v + 1 + ρ_v        method: π + (c̄ + δ + ρ) / MAT

with π the prefill time per committed token; the predicted speedup is their ratio, and the
break-even MAT the one where they are equal. δ, ρ and π come from `run --breakdown`; without it
they are 0: the pure memory-wall prediction MAT / c̄. The prediction is of time per token pooled
over the run, which is what the "pooled" measured speedup is (vanilla's ms per token over the
method's); Spec-Bench's speedup averages per-question throughputs instead, so questions where a
method is fastest weigh more there.
"""

from __future__ import annotations

import math

from ..names import batch_size_of, unbatched

ENGINE_MARGIN = 1.3      # c̄ over c̄* past this: the engine's kernels, not the device, limit it


def latencies_at(profile: dict, context: int | None = None) -> dict[str, float]:
    """The profile's latency table (tokens → seconds) at the measured context nearest to
    `context` (the first one when None)."""
    return profile["latency_seconds"][nearest_context(profile["latency_seconds"], context)]


def interpolated_cost(profile: dict, tokens: float, context: int | None = None) -> float:
    """Forward latency of a block of `tokens` (fractional: a mean block size), relative to a
    one-token forward, interpolated linearly between measured sizes at the nearest context."""
    table = latencies_at(profile, context)
    return interpolated(table, tokens) / table["1"]


def interpolated(table: dict[str, float], tokens: float) -> float:
    """A latency table's seconds at `tokens`, linear between measured sizes and past the last."""
    points = sorted((int(n), t) for n, t in table.items())
    if tokens <= points[0][0]:
        return points[0][1]
    for (n0, t0), (n1, t1) in zip(points, points[1:]):
        if tokens <= n1:
            return t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)
    return points[-1][1] * tokens / points[-1][0]        # past the table: linear in n


def one_step_ms(vanilla: dict, profile: dict, context: int | None) -> float:
    """A one-token forward: measured inside the run when it has a breakdown (same machine
    state as the methods), else the profile's."""
    b = vanilla.get("breakdown")
    if b and b["ms_per_step"]:
        return b["ms_per_step"]["verify"]
    return 1e3 * latencies_at(profile, context)["1"]


def terms(m: dict, unit_ms: float) -> dict:
    """π (prefill per token), δ (draft per step), ρ (rest per step) in one-token steps; zeros
    without a breakdown."""
    b = m.get("breakdown")
    if not b or not b["ms_per_step"]:
        return {"prefill": 0.0, "draft": 0.0, "rest": 0.0}
    return {"prefill": b["ms_per_token"]["prefill"] / unit_ms,
            "draft": b["ms_per_step"]["draft"] / unit_ms,
            "rest": b["ms_per_step"]["rest"] / unit_ms}


def verify_cost(m: dict, profile: dict, share: float, context: int | None) -> float:
    """c̄: the mean over the run's verification forwards of c(block size)."""
    return mean_over_blocks(m, lambda k: interpolated_cost(profile, k, context), share)


def roofline_verify_cost(m: dict, profile: dict, share: float,
                         context: int | None) -> float | None:
    """c̄*: the same mean of the device's roofline c*(block size), None where the profile has no
    roofline (written before it was measured)."""
    roof = profile.get("roofline_cost")
    if not roof:
        return None
    table = roof[nearest_context(roof, context)]
    return mean_over_blocks(m, lambda k: interpolated(table, k), share)


def mean_over_blocks(m: dict, cost, share: float) -> float:
    """`share` × the mean of cost(block size) over the run's verification forwards."""
    sizes = {int(k): n for k, n in m["block_sizes"].items()}
    return share * sum(n * cost(k) for k, n in sizes.items()) / sum(sizes.values())


def nearest_context(table: dict, context: int | None) -> str:
    contexts = [int(c) for c in table]
    return str(min(contexts, key=lambda c: abs(c - (context or contexts[0]))))


def predict(summary: dict, profile: dict, context: int | None = None,
            infos: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per method: predicted speedup, its terms, the break-even MAT, the pooled measured
    speedup and one line on the term that decides. `infos`: run.json's per-method info
    (`verify_layer_share`)."""
    methods = summary["methods"]
    vanilla = methods[summary.get("baseline", "vanilla")]
    unit = one_step_ms(vanilla, profile, context)
    v = terms(vanilla, unit)
    vanilla_per_token = v["prefill"] + 1 + v["rest"]
    out = {}
    for name, m in methods.items():
        mat = m.get("mean_accepted_overall")
        if not mat or not m.get("mean_verified") or m.get("batch_size", 1) > 1:
            continue      # batched rows: predict_batches
        share = (infos or {}).get(name, {}).get("verify_layer_share", 1.0)
        cost = verify_cost(m, profile, share, context)
        t = terms(m, unit)
        per_step = cost + t["draft"] + t["rest"]
        room = vanilla_per_token - t["prefill"]      # what a token may cost past its prefill
        need = per_step / room if room > 0 else float("inf")
        pooled = (vanilla["ms_per_token"] / m["ms_per_token"]
                  if m.get("ms_per_token") and vanilla.get("ms_per_token") else None)
        out[name] = {"predicted": vanilla_per_token / (t["prefill"] + per_step / mat),
                     "measured": m.get("speedup_overall"), "measured_pooled": pooled,
                     "mean_accepted": mat, "block": m["mean_verified"], "verify_cost": cost,
                     "draft_cost": t["draft"], "rest_cost": t["rest"],
                     "prefill_cost": t["prefill"], "vanilla_rest_cost": v["rest"],
                     "break_even": need,
                     "why": explain(mat, m["mean_verified"], cost, t["draft"], t["rest"], need)}
        roof = roofline_verify_cost(m, profile, share, context)
        if roof is not None and name != summary.get("baseline", "vanilla"):
            at_roof = vanilla_per_token / (t["prefill"] + (roof + t["draft"] + t["rest"]) / mat)
            limit = "the engine" if cost > ENGINE_MARGIN * roof else "the device"
            out[name].update(roofline_cost=roof, predicted_at_roofline=at_roof, limited_by=limit)
            out[name]["why"] += (f"; at the device's roofline verifying would cost {roof:.2f} "
                                 f"steps (predicted {at_roof:.2f}x): {limit} limits it")
    return out


def explain(mat: float, block: float, cost: float, draft: float, rest: float,
            need: float) -> str:
    """The term that decides: verification cost, drafting or the rest, in one line."""
    candidates = {f"verifying {block:.1f} tokens costs {cost:.2f} steps": cost - 1,
                  f"drafting costs {draft:.2f} of a step per round": draft,
                  f"the rest (acceptance, cache moves) costs {rest:.2f} of a step": rest}
    main = max(candidates, key=candidates.get)
    verdict = "gains" if mat > need else "cannot gain"
    return f"{main}: MAT must exceed {need:.2f} to gain (it is {mat:.2f}, {verdict})"


# ---------------------------------------------------------------- batch sizes above one

# Batch sizes the predicted break-even is searched over.
LARGEST_BATCH = 1024


def predicted_at_batch(size: int, mat: float, blocks: dict[int, int], profile: dict,
                       share: float, t: dict, v: dict, context: int | None) -> float:
    """Speedup at batch size B when each of B sequences verifies b tokens a step: vanilla's
    forward joins B one-token rows, the method's B blocks of b (the products read each weight
    once for all rows), drafting and the rest run per sequence. Per committed token:

        vanilla: π_v + (c_B(1) + B·ρ_v) / B      method: π + (share · c̄_B + B·(δ + ρ)) / (B·MAT)

    with c_B(b) the joined forward's cost (step_cost; ≈ c(B·b) where the profile has no joined
    timings) and c̄_B its mean over the run's verified block sizes `blocks` (size → forwards),
    as at batch 1: c of the mean block would overrate a method whose blocks are 1 or 11.
    (`t`, `v`: the method's and vanilla's terms at batch 1; at B = 1 this is `predict`'s.)"""
    vanilla = v["prefill"] + (step_cost(profile, size, 1, context) + size * v["rest"]) / size
    forwards = sum(blocks.values())
    cost = sum(n * step_cost(profile, size, b, context) for b, n in blocks.items()) / forwards
    method = t["prefill"] + (share * cost + size * (t["draft"] + t["rest"])) / (size * mat)
    return vanilla / method


def step_cost(profile: dict, sequences: int, tokens: float, context: int | None) -> float:
    """c: a forward of `sequences` sequences with `tokens` new tokens each, over a one-token
    forward: the profile's joined forwards where it timed that batch size (`profile
    --batch-sizes`, `run --breakdown`), else one block of sequences × tokens rows."""
    joined = (profile.get("batch_latency_seconds") or {}).get(str(sequences))
    if sequences == 1 or not joined:
        return interpolated_cost(profile, sequences * tokens, context)
    return interpolated(joined, tokens) / latencies_at(profile, context)["1"]


def crossing(points: list[tuple[int, float]]) -> float | None:
    """The batch size where the gain ends: the last place a speedup falls from ≥ 1 to below 1,
    interpolated in log2(B) between the two sizes around it. None while it still gains at the
    last size; 0.0 when it gains at none (a speedup may rise with B before it falls, where
    per-forward overheads first shrink per token)."""
    if not any(s >= 1 for _, s in points):
        return 0.0
    if points[-1][1] >= 1:
        return None
    for (b0, s0), (b1, s1) in reversed(list(zip(points, points[1:]))):
        if s1 < 1 <= s0:
            x0, x1 = math.log2(b0), math.log2(b1)
            return 2 ** (x0 + (x1 - x0) * (s0 - 1) / (s0 - s1))
    return None


def predict_batches(summary: dict, profile: dict | None, context: int | None = None,
                    infos: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per method run at several batch sizes (rows 'pld', 'pld+b4', …): measured and (with a
    profile) predicted speedup at each, and the batch size where each says the gain ends
    (predicted over 1..LARGEST_BATCH; measured between the sizes run). δ, ρ come from the
    batch-1 rows' breakdown (--breakdown), else 0: the pure memory-wall curve."""
    methods = summary["methods"]
    baseline = summary.get("baseline", "vanilla")
    vanilla = methods[baseline]
    unit = one_step_ms(vanilla, profile, context) if profile else None
    v = terms(vanilla, unit) if profile else None
    groups: dict[str, dict[int, dict]] = {}
    for name, m in methods.items():
        groups.setdefault(unbatched(name), {})[batch_size_of(name)] = m
    out = {}
    for name, rows in groups.items():
        if name == baseline or len(rows) < 2 and 1 in rows:
            continue
        any_row = rows.get(1) or next(iter(rows.values()))
        mat, block = any_row.get("mean_accepted_overall"), any_row.get("mean_verified")
        blocks = {int(k): n for k, n in (any_row.get("block_sizes") or {}).items()}
        if not mat or not blocks:
            continue
        share = (infos or {}).get(name, {}).get("verify_layer_share", 1.0)
        t = terms(rows.get(1, {}), unit) if profile else None

        def predicted(size):
            return predicted_at_batch(size, mat, blocks, profile, share, t, v,
                                      context) if profile else None
        sizes = sorted(rows)
        measured = [(b, rows[b]["speedup_overall"]) for b in sizes
                    if rows[b].get("speedup_overall") is not None]
        curve = [(b, predicted(b)) for b in range(1, LARGEST_BATCH + 1)] if profile else []
        out[name] = {"sizes": sizes, "mean_accepted": mat, "block": block,
                     "measured": {str(b): s for b, s in measured},
                     "predicted": {str(b): predicted(b) for b in sizes},
                     "aggregate_tokens_per_s": {str(b): rows[b].get("aggregate_tokens_per_s")
                                                for b in sizes},
                     "break_even_predicted": crossing(curve) if profile else None,
                     "break_even_measured": crossing(measured),
                     "largest_measured": sizes[-1]}
    return out
