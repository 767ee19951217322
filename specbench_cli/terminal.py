"""The terminal every command writes to: the consoles, the progress bar, and how an error
meant for users ends a command (one line, exit status 2)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import SpecbenchError

# Wide tables stay readable when output goes to a file or CI log (Rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@contextmanager
def user_errors():
    """Errors meant for users (SpecbenchError) become one line on stderr and exit status 2;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except SpecbenchError as err:
        # escaped: a message may hold brackets ('specbench-suite[ray]', a list) Rich would eat
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                    transient=False)
