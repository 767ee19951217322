"""The terminal every command writes to: the consoles, the progress bar, and how an error
meant for users ends a command (one line, exit status 2)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import SpecbenchError

# Wide tables stay readable when output goes to a file or CI log (Rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, the OOM killer's warning), handled as Ctrl-C is: what was
    in flight (a question, a training step) is dropped and everything finished is kept."""


def raise_terminated(signum, frame):
    raise Terminated()


def interrupt_status(err: KeyboardInterrupt) -> int:
    """The shell's exit status for a process ended by that signal: 128 + its number."""
    return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)


@contextmanager
def user_errors():
    """Errors meant for users (SpecbenchError) become one line on stderr and exit status 2;
    SIGTERM is handled as SIGINT: one line and exit status 143 (130); anything else is a bug
    and keeps its traceback."""
    main = threading.current_thread() is threading.main_thread()   # where handlers can be set
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main else None
    try:
        yield
    except SpecbenchError as err:
        # escaped: a message may hold brackets ('specbench-suite[ray]', a list) Rich would eat
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2)
    except KeyboardInterrupt as err:
        name = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        err_console.print(f"{name}; what was finished is kept", highlight=False, soft_wrap=True)
        raise typer.Exit(interrupt_status(err))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                    transient=False)
