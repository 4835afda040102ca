"""The progress bar of long work (search, calibrate, audit, merge), readable at 80 columns.

Description, bar, done/total and the time remaining come first and never wrap; the free text after
them (`info`) gets the width that is left and is the only part cut, with an ellipsis, on a narrow
terminal. Every task needs an `info` field: `bar.add_task(..., info="")`.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column


def progress_bar(
    console: Console | None = None, *, disable: bool = False, transient: bool = False
) -> Progress:
    def fixed() -> Column:
        return Column(no_wrap=True)

    return Progress(
        TextColumn("[bold]{task.description}", table_column=fixed()),
        BarColumn(bar_width=20, table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        TextColumn("{task.fields[info]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=console or Console(stderr=True),
        disable=disable,
        transient=transient,
        expand=True,  # the info column (ratio 1) gets exactly the width the others leave
    )
