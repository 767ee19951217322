"""Every `specbench …` command shown in the README and docs/ exists, and every option it uses
is one that command takes (its --help, no run)."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"train", "medusa", "datastore"}       # commands with subcommands


def shown_commands() -> list[tuple[str, str]]:
    """(file, command line) for every line in a fenced block that starts with `specbench `."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        in_block = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
            elif in_block and line.lstrip().startswith("specbench "):
                found.append((path.name, line.strip()))
    return found


def test_the_docs_show_commands():
    assert len(shown_commands()) > 20


@pytest.mark.parametrize("where, line", shown_commands())
def test_a_shown_command_and_its_options_exist(where, line):
    words = shlex.split(re.sub(r"\s#.*$", "", line).rstrip("\\ "))
    command = words[1:3] if words[1] in GROUPS else words[1:2]
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, (where, line, result.output)
    for word in words:
        option = word.split("=", 1)[0]
        if option.startswith("--"):
            assert option in result.output, (where, line, option)
