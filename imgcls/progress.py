"""Progress bars and console output, one place for the whole toolkit (rich)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)   # status, warnings and progress
stdout = Console()                # results: reports and tables


def progress_enabled() -> bool:
    return os.environ.get("IMGCLS_PROGRESS", "1") != "0"


class RateColumn(ProgressColumn):
    """Steps per second, as rich measures them over the last seconds: "1,234 images/s"."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.0f} {self.unit}/s")


@contextmanager
def progress_bar(total: int, description: str, unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """A bar for `total` steps; yields advance(n=1). With a unit ("images"), it also shows the steps
    per second. Silent when IMGCLS_PROGRESS=0."""
    if not progress_enabled() or total <= 0:
        yield lambda n=1: None
        return
    rate = (RateColumn(unit),) if unit else ()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate,
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
