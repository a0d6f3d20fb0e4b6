"""Progress on long work: live counters on stderr, only for a person at a terminal."""

from __future__ import annotations

import sys
from typing import Callable

import click

Progress = Callable[[str, int], None]


def progress_printer(enabled: bool) -> Progress | None:
    """A counter line on stderr when ``enabled`` and stderr is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None

    def show(what: str, count: int) -> None:
        click.echo(f"\r  {what}: {count:,}\033[K", err=True, nl=False)

    return show


def end_progress(progress: Progress | None) -> None:
    """Clear the progress line, so what follows starts on a clean line."""
    if progress is not None:
        click.echo("\r\033[K", err=True, nl=False)
