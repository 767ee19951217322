"""The report's table of endpoint rows (`run --endpoint`): what the servers counted themselves
and the latency seen from this client. Numbers come from metrics.summarize."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from .results import fmt


def is_endpoint_run(summary: dict) -> bool:
    return any(m.get("latency") for m in summary["methods"].values())


def render_endpoints(summary: dict, title: str = "endpoint details") -> Table:
    """Per endpoint row: its counters' source, the declared statistics (TTFT, decode rate,
    acceptance), the chunk-gap percentiles and the acceptance at each draft position."""
    table = Table(title=title)
    labels = list(dict.fromkeys(s["label"] for m in summary["methods"].values()
                                for s in m["statistics"]))
    table.add_column("endpoint", style="bold", no_wrap=True)
    for col in ["counters", *labels, "gap p50", "gap p90", "gap p99", "accepted by position"]:
        table.add_column(escape(col), justify="right")
    for name, m in summary["methods"].items():
        lat = m.get("latency") or {}
        values = {s["label"]: fmt(s["value"], ".0f" if s["unit"] in ("%", "ms") else ".2f",
                                  "%" if s["unit"] == "%" else "") for s in m["statistics"]}
        positions = lat.get("accepted_per_position")
        table.add_row(name, ", ".join(lat.get("counter_sources") or []) or "none",
                      *[values.get(label, "") for label in labels],
                      *[fmt(lat.get(p), ".1f") for p in ("p50", "p90", "p99")],
                      " ".join(f"{100 * p:.0f}%" for p in positions) if positions else "–")
    return table
