"""What every ``tiertwin`` command shares: the console and the one-line error wrapper."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console

from tiertwin.errors import TiertwinError

console = Console(width=None if sys.stdout.isatty() else 160)


def one_line_errors(fn: Callable) -> Callable:
    """Turn a TiertwinError into ``error: <message>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TiertwinError as exc:
            message = " ".join(str(exc).split())
            Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper
