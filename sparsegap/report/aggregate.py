"""From jobs to what the figures and tables show: curves, final and best values, per method.

Jobs are grouped by *setting* (scenario, N, M, K, l1_coeff) and, within it, by method *label*
(``sae``, ``mlp-256``…). Replicas of every job in a group are pooled: the band of a curve and the
± of a table entry are the standard deviation over all those replicas. *Final* is a replica's
value at its last evaluation; *best* is its maximum over all evaluations (the paper's Fig. 5).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsegap.report.collect import Job

# Methods in this order, then anything else alphabetically: colours and legends follow it.
PREFERRED = ["sae", "sae_ito", "sae_ito-scratch", "sparse_coding", "mlp-32", "mlp-256", "mlp-1024"]
BASELINE = "sae"

Setting = tuple[Any, Any, Any, Any, Any]  # scenario, N, M, K, l1_coeff


def setting_of(job: Job) -> Setting:
    return (job.scenario, *job.regime, job.l1_coeff)


def fmt_l1(l1: Any) -> str:
    return f"{l1:g}" if isinstance(l1, int | float) else str(l1)


def setting_title(setting: Setting) -> str:
    scenario, n, m, k, l1 = setting
    text = f"{scenario} scenario · N={n} sources, M={m} measurements, K={k} active"
    return text if scenario == "known_codes" else f"{text} · L1 coefficient λ={fmt_l1(l1)}"


def setting_slug(setting: Setting) -> str:
    scenario, n, m, k, l1 = setting
    return f"{scenario}_N{n}_M{m}_K{k}_l1-{fmt_l1(l1)}"


def order_labels(labels: Any) -> list[str]:
    """Known methods in the paper's order, then the rest; ``sae lr=…`` variants after ``sae``."""

    def key(label: str) -> tuple[int, str]:
        base = label.split(" ")[0]
        return (PREFERRED.index(base) if base in PREFERRED else len(PREFERRED), label)

    return sorted(set(labels), key=key)


def replica_values(job: Job, key: str) -> list[list[float]]:
    """Per evaluation, the per-replica values of ``key`` (missing evaluations are skipped)."""
    out = []
    for entry in job.evaluations:
        value = entry.get(key)
        if isinstance(value, dict):
            out.append([float(v) for v in value["replicas"]])
    return out


def final_and_best(job: Job, key: str = "latent_mcc/test") -> tuple[list[float], list[float]]:
    """Per replica: the value at the last evaluation, and the maximum over evaluations."""
    values = replica_values(job, key)
    if not values:
        return [], []
    table = np.array(values, dtype=float)  # evaluations × replicas
    with np.errstate(invalid="ignore"):
        best = [float(np.nanmax(col)) if np.isfinite(col).any() else math.nan for col in table.T]
    return [float(v) for v in table[-1]], best


# A run of at most this fraction of its scenario's paper length is called short in the report.
SHORT_FRACTION = 0.5
# MCC that rose at each of the last RISING_EVALUATIONS evaluations, by more than RISING_BY in
# all, is still rising.
RISING_EVALUATIONS, RISING_BY = 3, 0.005


def caveats(jobs: list[Job], key: str = "latent_mcc/test") -> list[str]:
    """Why ``jobs``' final numbers may not be the converged ones, in words (none: they are):
    runs much shorter than the scenario's paper length (sparse coding's MCC, for one, dips for
    thousands of steps before it rises), and mean ``key`` still rising at the last evaluations.
    Only for jobs with ground truth (``key`` logged); a language-model run has no paper length."""
    scored = [j for j in jobs if j.evaluations and key in j.evaluations[-1]]
    notes = []
    short = []
    for job in scored:
        step, paper = job.evaluations[-1].get("step"), job.config.get("scenario", {}).get("steps")
        if isinstance(step, int) and isinstance(paper, int) and step <= SHORT_FRACTION * paper:
            short.append((step, paper))
    if short:
        step, paper = min(short)
        notes.append(f"short run: {step:,} of the paper's {paper:,} steps")
    for job in scored:
        means = [e[key]["mean"] for e in job.evaluations if isinstance(e.get(key), dict)]
        last = means[-RISING_EVALUATIONS:]
        climbing = all(a < b for a, b in itertools.pairwise(last))
        if len(last) == RISING_EVALUATIONS and climbing and last[-1] - last[0] > RISING_BY:
            notes.append("MCC still rising at the last evaluations")
            break
    return notes


def above_bound(n: Any, m: Any, k: Any) -> bool:
    """Whether a regime has the measurements compressed sensing needs to recover K-sparse codes
    of N sources: M ≥ K·ln(N/K)."""
    return m >= k * math.log(n / k)


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


@dataclass
class Curve:
    """Mean ± std over pooled replicas of one metric, per evaluated step."""

    steps: np.ndarray
    flops: np.ndarray  # cumulative training FLOPs per model at those steps
    mean: np.ndarray
    std: np.ndarray
    replicas: int


def curve(jobs: list[Job], key: str) -> Curve | None:
    by_step: dict[int, list[float]] = defaultdict(list)
    flops: dict[int, list[float]] = defaultdict(list)
    replicas = 0
    for job in jobs:
        seen = False
        for entry in job.evaluations:
            value = entry.get(key)
            if not isinstance(value, dict) or "step" not in entry:
                continue
            seen = True
            step = int(entry["step"])
            by_step[step].extend(v for v in value["replicas"] if math.isfinite(v))
            if "flops/train_cumulative" in entry:
                flops[step].append(float(entry["flops/train_cumulative"]))
        if seen:
            replicas += int(job.config.get("replicas") or 1)
    steps = sorted(s for s, v in by_step.items() if v)
    if not steps:
        return None
    stats = [mean_std(by_step[s]) for s in steps]
    return Curve(
        steps=np.array(steps, dtype=float),
        flops=np.array([statistics.fmean(flops[s]) if flops[s] else math.nan for s in steps]),
        mean=np.array([m for m, _ in stats]),
        std=np.array([s for _, s in stats]),
        replicas=replicas,
    )


def group(jobs: list[Job]) -> dict[Setting, dict[str, list[Job]]]:
    """setting → label → jobs (settings in sorted order)."""
    out: dict[Setting, dict[str, list[Job]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        out[setting_of(job)][job.label].append(job)
    return dict(sorted(out.items(), key=lambda kv: tuple(_sortable(x) for x in kv[0])))


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


@dataclass
class Row:
    """One line of the summary table: one method in one setting."""

    setting: Setting
    label: str
    jobs: int
    replicas: int
    final: tuple[float, float]
    best: tuple[float, float]
    dictionary: tuple[float, float]
    flops_train: float
    wall_time_s: float
    caveats: list[str] = field(default_factory=list)  # see caveats()


def summary_rows(jobs: list[Job]) -> list[Row]:
    rows = []
    for setting, by_label in group(jobs).items():
        for label in order_labels(by_label):
            members = by_label[label]
            finals, bests, dicts = [], [], []
            for job in members:
                final, best = final_and_best(job)
                finals += final
                bests += best
                dicts += final_and_best(job, "dictionary_mcc")[0]
            flops = [
                float(j.evaluations[-1]["flops/train_cumulative"])
                for j in members
                if j.evaluations and "flops/train_cumulative" in j.evaluations[-1]
            ]
            walls = [j.wall_time_s for j in members if j.wall_time_s is not None]
            rows.append(
                Row(
                    setting=setting,
                    label=label,
                    jobs=len(members),
                    replicas=len(finals),
                    final=mean_std(finals),
                    best=mean_std(bests),
                    dictionary=mean_std(dicts),
                    flops_train=statistics.fmean(flops) if flops else math.nan,
                    wall_time_s=statistics.fmean(walls) if walls else math.nan,
                    caveats=caveats(members),
                )
            )
    return rows
