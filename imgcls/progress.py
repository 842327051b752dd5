"""Progress bars and console output, one place for the whole toolkit (rich)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)   # status, warnings and progress
stdout = Console()                # results: reports and tables


def progress_enabled() -> bool:
    return os.environ.get("IMGCLS_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A bar for `total` steps; yields advance(n=1). Silent when IMGCLS_PROGRESS=0."""
    if not progress_enabled() or total <= 0:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
