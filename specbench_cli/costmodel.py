"""Predicted speedup from the memory-wall cost model, next to the measured one.

In units of one vanilla step (a one-token forward, plus what vanilla spends around it), a
method's target forward over a block of b tokens costs c(b) (the profile's latency of b tokens
over that of one, times the share of layers the verification runs), its drafting δ and its
other per-step work ρ. Each such step commits MAT
tokens, so

    predicted speedup = MAT × (1 + ρ_vanilla) / (c(b) + δ + ρ),

and the method gains only while MAT exceeds the break-even c(b) + δ + ρ (over 1 + ρ_vanilla).
Without a breakdown (`run --breakdown`) δ and ρ are unknown and left at 0: the pure memory-wall
prediction MAT / c(b). Prefill is left out: every method pays it alike.
"""

from __future__ import annotations

from .profile import interpolated_cost


def step_terms(method: dict, vanilla: dict, one_step_ms: float) -> tuple[float, float, float]:
    """(δ, ρ, ρ_vanilla) in one-token steps; zeros where no breakdown was recorded."""
    b, v = method.get("breakdown"), vanilla.get("breakdown")
    if not b or not v or not b["ms_per_step"]:
        return 0.0, 0.0, 0.0
    per_step = b["ms_per_step"]
    return (per_step["draft"] / one_step_ms, per_step["rest"] / one_step_ms,
            v["ms_per_step"]["rest"] / one_step_ms)


def one_step_ms(vanilla: dict, profile: dict, context: int | None) -> float:
    """A one-token forward: measured inside the run when it has a breakdown (same machine
    state as the methods), else the profile's."""
    b = vanilla.get("breakdown")
    if b and b["ms_per_step"]:
        return b["ms_per_step"]["verify"]
    contexts = [int(c) for c in profile["latency_seconds"]]
    key = str(min(contexts, key=lambda c: abs(c - (context or contexts[0]))))
    return 1e3 * profile["latency_seconds"][key]["1"]


def predict(summary: dict, profile: dict, context: int | None = None,
            infos: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per method: predicted speedup, its terms, the break-even MAT and one line on what holds
    it back. `infos` (run.json's per-method info) may scale a method's verification forward by
    the share of layers it runs (`verify_layer_share`: Kangaroo verifies with the deep layers)."""
    methods = summary["methods"]
    vanilla = methods[summary.get("baseline", "vanilla")]
    unit = one_step_ms(vanilla, profile, context)
    out = {}
    for name, m in methods.items():
        mat, block = m.get("mean_accepted_overall"), m.get("mean_verified")
        if not mat or not block:
            continue
        share = (infos or {}).get(name, {}).get("verify_layer_share", 1.0)
        cost = share * interpolated_cost(profile, block, context)
        draft, rest, vanilla_rest = step_terms(m, vanilla, unit)
        need = (cost + draft + rest) / (1 + vanilla_rest)
        out[name] = {"predicted": mat / need, "measured": m.get("speedup_overall"),
                     "mean_accepted": mat, "block": block, "verify_cost": cost,
                     "draft_cost": draft, "rest_cost": rest, "vanilla_rest_cost": vanilla_rest,
                     "break_even": need, "why": explain(mat, block, cost, draft, rest, need)}
    return out


def explain(mat: float, block: float, cost: float, draft: float, rest: float,
            need: float) -> str:
    """The term that decides: verification cost, drafting or the rest, in one line."""
    terms = {f"verifying {block:.1f} tokens costs {cost:.2f} steps": cost - 1,
             f"drafting costs {draft:.2f} of a step per round": draft,
             f"the rest (acceptance, cache moves) costs {rest:.2f} of a step": rest}
    main = max(terms, key=terms.get)
    verdict = "gains" if mat > need else "cannot gain"
    return f"{main}: MAT must exceed {need:.2f} to gain (it is {mat:.2f}, {verdict})"
