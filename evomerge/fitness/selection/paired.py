"""Paired comparison of two models on the same items, from their per-item 0/1 correctness.

Two models scored on the same items differ only where they disagree, so the noise of their
difference is far below what each model's own binomial standard error suggests:

- the paired standard error of the difference in accuracy d = (n10 - n01) / n, where n10 counts
  the items only the first model answers and n01 those only the second does, is
  sqrt(n10 + n01 - (n10 - n01)^2 / n) / n (Agresti, Categorical Data Analysis, 3rd ed., 2013,
  sec. 11.1.1: the variance of the difference of dependent proportions);
- McNemar's test (McNemar 1947, Psychometrika 12:153) of "both models are equally accurate",
  exact: under the null each of the n10 + n01 discordant items is a fair coin, so the two-sided
  p-value is the binomial test of n10 successes in n10 + n01 trials with p = 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binomtest

from evomerge.errors import ConfigError


@dataclass(frozen=True)
class PairedComparison:
    """First model minus second, on n shared items (accuracies as fractions)."""

    n: int
    only_first: int  # items only the first model answers correctly (n10)
    only_second: int  # items only the second model answers correctly (n01)
    diff: float
    se: float
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compare(first: Sequence[int], second: Sequence[int]) -> PairedComparison:
    """Paired difference, its standard error and McNemar's exact p-value for 0/1 answers."""
    if len(first) != len(second) or not first:
        raise ConfigError(
            f"a paired comparison needs both models' answers on the same items (got {len(first)} "
            f"and {len(second)}); score them on one split"
        )
    if any(value not in (0, 1) for value in (*first, *second)):
        raise ConfigError("a paired comparison needs 0/1 correctness per item")
    n = len(first)
    n10 = sum(a and not b for a, b in zip(first, second, strict=True))
    n01 = sum(b and not a for a, b in zip(first, second, strict=True))
    discordant = n10 + n01
    se = math.sqrt(max(discordant - (n10 - n01) ** 2 / n, 0.0)) / n
    p_value = binomtest(n10, discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(n, n10, n01, (n10 - n01) / n, se, float(p_value))


def compare_answers(
    first: Mapping[str, int], second: Mapping[str, int], ids: Sequence[str]
) -> PairedComparison:
    """`compare` on the items `ids` of two {item id: 0/1} answer maps."""
    missing = [i for i in ids if i not in first or i not in second]
    if missing:
        raise ConfigError(
            f"a paired comparison lacks answers on items {missing[:3]}; score both models on them"
        )
    return compare([first[i] for i in ids], [second[i] for i in ids])
