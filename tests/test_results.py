"""The results layer: what report, plots and compare import, and what they must not."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imports_in_fresh_python(code: str) -> None:
    """Run `code` in a new interpreter (this one has torch loaded already by other tests)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("modules", [
    "specbench_cli.analysis.report, specbench_cli.analysis.compare, specbench_cli.analysis.results, specbench_cli.analysis.metrics, "
    "specbench_cli.analysis.plots, specbench_cli.analysis.costmodel", "specbench_cli.cli, specbench_cli.api"])
def test_report_and_compare_start_without_torch(modules):
    # `specbench report` and `compare` read JSON lines: torch and transformers would add ~1.5 s.
    imports_in_fresh_python(f"import sys; import {modules}; "
                            "assert 'torch' not in sys.modules, 'torch'; "
                            "assert 'transformers' not in sys.modules, 'transformers'")


@pytest.mark.parametrize("module, other", [
    ("specbench_cli.analysis.report", "specbench_cli.analysis.plots"), ("specbench_cli.analysis.plots", "specbench_cli.analysis.report"),
    ("specbench_cli.analysis.compare", "specbench_cli.analysis.report"),
    ("specbench_cli.analysis.results", "specbench_cli.analysis.report")])
def test_modules_import_alone_without_each_other(module, other):
    imports_in_fresh_python(f"import sys; import {module}; assert '{other}' not in sys.modules")
