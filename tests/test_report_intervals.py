"""Intervals over data draws (``report/intervals.py``) against scipy and hand-computed values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from sparsegap.report.intervals import over_draws, paired, t_quantile, welch


def test_t_quantiles_match_the_table():
    # Two-sided 95 % Student-t quantiles from any statistics table.
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)]:
        assert t_quantile(df) == pytest.approx(value, abs=1e-3)


def test_over_draws_by_hand_and_against_scipy():
    # Per-draw replica means 0.8, 0.9, 1.0: mean 0.9, sd 0.1, n = 3, t(2) = 4.30265.
    by_draw = {0: [0.7, 0.9], 1: [0.85, 0.95], 2: [1.0]}
    value = over_draws(by_draw)
    assert (value.mean, value.draws, value.replicas) == (pytest.approx(0.9), 3, 5)
    assert value.sd == pytest.approx(0.1)
    t = 4.302652729911275
    assert value.confidence == pytest.approx(
        (0.9 - t * 0.1 / math.sqrt(3), 0.9 + t * 0.1 / math.sqrt(3))
    )
    assert value.prediction == pytest.approx(
        (0.9 - t * 0.1 * math.sqrt(4 / 3), 0.9 + t * 0.1 * math.sqrt(4 / 3))
    )
    ci = stats.t.interval(0.95, df=2, loc=0.9, scale=0.1 / math.sqrt(3))
    assert value.confidence == pytest.approx(ci)
    assert value.contains(0.5) and not value.contains(1.5) and not value.above(0.5)
    assert value.above(-0.2)


def test_one_draw_falls_back_to_mean_and_std_over_replicas():
    value = over_draws({0: [0.5, 0.7, math.nan]})
    assert (value.mean, value.draws, value.replicas) == (pytest.approx(0.6), 1, 2)
    assert value.sd == pytest.approx(math.sqrt(0.02))
    assert value.confidence is None and value.prediction is None
    assert value.contains(0.6) is None
    assert value.above(0.5) and not value.above(0.7)  # the mean, without an interval


def test_paired_differences_cancel_what_the_draw_moves():
    # The draw moves both methods together: unpaired the gap drowns, paired it is exact.
    a = {0: [0.6], 1: [0.8], 2: [0.9], 3: [0.5]}
    b = {d: [v[0] - 0.05 + 0.001 * d] for d, v in a.items()}
    b[9] = [0.1]  # a draw only one of them has is left out
    gap = paired(a, b)
    assert gap.draws == 4 and gap.mean == pytest.approx(0.05 - 0.0015)
    assert gap.above(0)
    assert not over_draws(a).above(over_draws(b).mean)
    diffs = [0.05 - 0.001 * d for d in range(4)]
    half = stats.t.ppf(0.975, 3) * stats.tstd(diffs) * math.sqrt(1 + 1 / 4)
    assert gap.prediction == pytest.approx((gap.mean - half, gap.mean + half))


def test_welch_interval_against_scipy():
    a, b = [0.61, 0.65, 0.58, 0.66, 0.63], [0.55, 0.52, 0.60, 0.57, 0.49]
    diff, bounds = welch(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 5 - sum(b) / 5)
    assert bounds == pytest.approx((ci.low, ci.high))
    assert welch([0.5], b) is None
