"""Uncertainty over data draws: the paper's number is the mean of its replicas on one data draw,
so the quantity to compare with it is a per-draw replica mean. Over n draws (data seeds) this
module gives the mean of the per-draw means, the 95 % confidence interval of that mean (Student t,
n − 1 degrees of freedom) and the 95 % prediction interval for one new draw's replica mean
(mean ± t·sd·√(1 + 1/n)). With one draw there is no interval: the mean ± std over its replicas.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over data draws with its intervals (``None`` below two draws)."""

    mean: float
    sd: float  # of the per-draw means; over the replicas with one draw
    draws: int
    replicas: int  # values pooled over every draw
    confidence: tuple[float, float] | None  # of the mean over draws
    prediction: tuple[float, float] | None  # of one new draw's replica mean

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies inside the prediction interval (None: no interval)."""
        if self.prediction is None or not math.isfinite(value):
            return None
        low, high = self.prediction
        return low <= value <= high

    def above(self, value: float = 0.0) -> bool:
        """Whether the prediction interval lies above ``value``; with one draw, the mean."""
        if self.prediction is None:
            return math.isfinite(self.mean) and self.mean > value
        return self.prediction[0] > value


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student-t quantile: t such that P(|T| ≤ t) = level with ``df`` degrees."""
    return float(student_t.ppf(0.5 + level / 2, df))


def draw_means(by_draw: Mapping[Any, list[float]]) -> dict[Any, float]:
    """Per draw, the mean of its finite replica values (draws without any are left out)."""
    out = {}
    for draw, values in by_draw.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            out[draw] = statistics.fmean(finite)
    return out


def over_draws(by_draw: Mapping[Any, list[float]], level: float = LEVEL) -> Interval:
    """Mean of the per-draw replica means with its confidence and prediction intervals."""
    means = list(draw_means(by_draw).values())
    replicas = sum(sum(math.isfinite(v) for v in values) for values in by_draw.values())
    if not means:
        return Interval(math.nan, math.nan, 0, 0, None, None)
    if len(means) == 1:
        pooled = [v for values in by_draw.values() for v in values if math.isfinite(v)]
        sd = statistics.stdev(pooled) if len(pooled) > 1 else 0.0
        return Interval(means[0], sd, 1, replicas, None, None)
    return _interval(means, replicas, level)


def paired(
    a: Mapping[Any, list[float]], b: Mapping[Any, list[float]], level: float = LEVEL
) -> Interval:
    """The difference a − b of per-draw replica means over the draws both have, with its
    intervals: paired by draw, so what the draw moves in both cancels."""
    ma, mb = draw_means(a), draw_means(b)
    shared = sorted(set(ma) & set(mb), key=str)
    diffs = [ma[d] - mb[d] for d in shared]
    replicas = sum(sum(math.isfinite(v) for v in [*a[d], *b[d]]) for d in shared)
    if not diffs:
        return Interval(math.nan, math.nan, 0, 0, None, None)
    if len(diffs) == 1:
        return Interval(diffs[0], math.nan, 1, replicas, None, None)
    return _interval(diffs, replicas, level)


def welch(
    a: list[float], b: list[float], level: float = LEVEL
) -> tuple[float, tuple[float, float]] | None:
    """mean(a) − mean(b) with its confidence interval (Welch: unequal variances), for two
    groups of replicas on one draw; None below two values in either group."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return diff, (diff, diff)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(df, level) * math.sqrt(va + vb)
    return diff, (diff - half, diff + half)


def _interval(means: list[float], replicas: int, level: float) -> Interval:
    n = len(means)
    mean, sd = statistics.fmean(means), statistics.stdev(means)
    t = t_quantile(n - 1, level)
    half_ci, half_pi = t * sd / math.sqrt(n), t * sd * math.sqrt(1 + 1 / n)
    return Interval(
        mean, sd, n, replicas, (mean - half_ci, mean + half_ci), (mean - half_pi, mean + half_pi)
    )


def span(bounds: tuple[float, float] | None, digits: int = 3) -> str:
    """``[low, high]``, or ``–`` without an interval."""
    if bounds is None:
        return "–"
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
