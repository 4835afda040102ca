"""The paired comparison: McNemar's exact test and the paired standard error, by hand and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from evomerge.errors import ConfigError
from evomerge.fitness.selection.paired import compare, compare_answers


def test_hand_computed_values() -> None:
    # 10 items: both right on 2, only the first on 6, only the second on 1, both wrong on 1.
    first = [1, 1] + [1] * 6 + [0] + [0]
    second = [1, 1] + [0] * 6 + [1] + [0]
    result = compare(first, second)
    assert (result.n, result.only_first, result.only_second) == (10, 6, 1)
    assert result.diff == pytest.approx(0.5)
    # sqrt(7 - 25/10) / 10
    assert result.se == pytest.approx(math.sqrt(4.5) / 10)
    # Two-sided exact binomial on 7 discordant pairs: 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128.
    assert result.p_value == pytest.approx(0.125)
    assert compare(second, first).diff == pytest.approx(-0.5) and compare(second, first).p_value == 0.125


def test_identical_models_and_balanced_disagreement() -> None:
    same = compare([1, 0, 1, 1], [1, 0, 1, 1])
    assert same.diff == 0.0 and same.se == 0.0 and same.p_value == 1.0
    balanced = compare([1, 0, 1, 0], [0, 1, 0, 1])
    assert balanced.diff == 0.0 and balanced.p_value == 1.0 and balanced.se == pytest.approx(1.0 / 2)


def test_matches_the_paired_t_standard_error_and_scipy() -> None:
    rng = np.random.default_rng(3)
    first = (rng.random(400) < 0.6).astype(int)
    second = np.where(rng.random(400) < 0.8, first, 1 - first)
    result = compare(first.tolist(), second.tolist())
    d = first - second
    # The paired SE is the population sd of the per-item differences over sqrt(n).
    assert result.se == pytest.approx(d.std(ddof=0) / math.sqrt(len(d)))
    assert result.diff == pytest.approx(d.mean())
    n10, n01 = int(((first == 1) & (second == 0)).sum()), int(((first == 0) & (second == 1)).sum())
    assert result.p_value == pytest.approx(stats.binomtest(n10, n10 + n01).pvalue)
    # Paired is tighter than treating the two accuracies as independent.
    independent = math.sqrt(sum(x.mean() * (1 - x.mean()) / len(x) for x in (first, second)))
    assert result.se < independent


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="same items"):
        compare([1, 0], [1])
    with pytest.raises(ConfigError, match="0/1"):
        compare([1, 2], [1, 0])
    with pytest.raises(ConfigError, match="lacks answers on items"):
        compare_answers({"a": 1}, {"b": 1}, ["a"])
    assert compare_answers({"a": 1, "b": 0}, {"a": 0, "b": 0}, ["a", "b"]).only_first == 1
