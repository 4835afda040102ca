"""How accuracy reads in evomerge's output: one unit, said where it is printed.

Everything a person reads (tables, summaries, progress bars) gives accuracy in percent with one
decimal, under a header or beside a sign that says `%`; a difference of two accuracies is in
percentage points (`pts`). JSON and CSV keep the value the study stores, a fraction in [0, 1], and
name that unit: a JSON payload that carries accuracies has `"accuracy_unit": "fraction"`, and a CSV
column of accuracies ends in `_fraction`. `fraction * 100` is the printed percent.
"""

from __future__ import annotations

from collections.abc import Mapping

JSON_UNIT = {"accuracy_unit": "fraction"}  # merged into every JSON payload that carries accuracies
CSV_SUFFIX = "_fraction"


def pct(value: float | None) -> str:
    """A fraction as the percent people read: 0.25 -> '25.0'; None -> '-'."""
    return "-" if value is None else f"{100 * value:.1f}"


def pct_list(values: Mapping[str, float]) -> str:
    """'arith 25.0%, logic 30.0%' (or '-' for none)."""
    return ", ".join(f"{task} {pct(value)}%" for task, value in values.items()) or "-"
