"""Speedup against budget (runs with `--budget`): each method's rows side by side by the tokens
they verify a step, the fitted choice (`--budget auto`) and the prediction that chose it."""

from __future__ import annotations

from ..names import batch_size_of, batched, budget_of, without_budget


def budget_curves(summary: dict, meta: dict) -> dict[str, dict]:
    """Per method and batch size ('pld', 'pld+b4') run at several budgets: the measured speedup
    at each budget (its own size included: the row without a budget, at the budget run.json
    records for it), the auto row's choice, prediction and measured speedup, the best fixed
    budget, and the fit's predicted curve."""
    described = meta.get("methods", {})
    fits = meta.get("budgets") or {}
    groups: dict[str, dict[str, str]] = {}
    for name in summary["methods"]:
        group = batched(without_budget(name), batch_size_of(name))
        groups.setdefault(group, {})[budget_of(name) or "default"] = name
    out = {}
    for group, rows in groups.items():
        if len(rows) < 2:
            continue
        measured = {}
        for label, name in rows.items():
            budget = described.get(name, {}).get("budget") if label in ("default", "auto") \
                else int(label)
            if label == "auto" and name in fits:
                budget = fits[name]["budget"]
            measured[label] = {"budget": budget,
                               "speedup": summary["methods"][name].get("speedup_overall")}
        fixed = {k: v for k, v in measured.items() if k != "auto" and v["speedup"] is not None}
        best = max(fixed, key=lambda k: fixed[k]["speedup"]) if fixed else None
        fit = fits.get(rows.get("auto"), {})
        out[group] = {
            "rows": measured, "best_fixed": best,
            "auto": {"row": rows["auto"], "budget": fit.get("budget"),
                     "predicted": fit.get("predicted"),
                     "measured": measured.get("auto", {}).get("speedup"),
                     "cached": fit.get("cached"), "questions": len(fit.get("questions", [])),
                     "tokens": fit.get("tokens")} if fit else None,
            "predicted_curve": {int(b): c["predicted"]
                                for b, c in fit.get("candidates", {}).items()}}
    return out


def budget_notes(curves: dict) -> list[str]:
    notes = ["budget: the most tokens one verification forward takes (the pending token plus "
             "every drafted token or tree node; `specbench list` shows which options each "
             "method's budget sets); default: the method's own size, in brackets; speedup as in "
             "the leaderboard"]
    for group, curve in curves.items():
        auto = curve["auto"]
        if not auto:
            continue
        best = curve["rows"].get(curve["best_fixed"], {})
        ratio = (f", {auto['measured'] / best['speedup']:.2f} of the best fixed row's"
                 if auto["measured"] and best.get("speedup") else "")
        notes.append(f"{auto['row']}: {auto['budget']} tokens a step, predicted "
                     f"{auto['predicted']:.2f}x, measured {auto['measured'] or 0:.2f}x{ratio}; "
                     f"fitted on {auto['questions']} held-out questions (≤ {auto['tokens']} "
                     "tokens a turn): each candidate's MAT, drafting and other work per step measured, "
                     "its verification cost from the profile's c(n), the highest prediction "
                     "chosen" + (" (read from the cache)" if auto["cached"] else ""))
    return notes
