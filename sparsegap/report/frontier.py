"""The compute frontier (issue 4): what each method's codes are worth against what they cost.

For every setting (scenario, N, M, K, λ) whose jobs compare at least ``MIN_METHODS`` methods on
the same data, one point per method: final test latent MCC and dictionary MCC (mean ± std over
the pooled replicas) against

- total FLOPs per model: cumulative training FLOPs plus one inference pass over the test set
  (``flops/total`` of the last evaluation) — the paper's App. G cost, with iterative inference
  counted where it is spent;
- wall time of the job (seconds, all replicas and evaluations of the run together).

The Pareto front (no other method both cheaper or as cheap and at least as good, one of them
strictly) is drawn through the points. Methods are *one-pass* (amortised: a fixed feed-forward
encoder, LISTA included — its T layers are a fixed unrolled network) or *iterative* (codes found by
an optimisation per sample at test time: sparse coding, SAE + ITO, dictionary learning). The
amortisation gap is stated as the best iterative method minus the best one-pass encoder, in MCC
and in FLOPs, and at matched compute.

Writes ``frontier_<setting>.png/.pdf`` and ``frontier.md`` (the gap statement and a table per
setting) into the report folder.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from sparsegap.report.aggregate import (
    Setting,
    caveats,
    final_and_best,
    group,
    mean_std,
    order_labels,
    setting_slug,
    setting_title,
)
from sparsegap.report.collect import Job, display, is_iterative
from sparsegap.report.figures import data_conditions, save

# Fewer methods than this in a setting (a regime sweep's SAE / MLP / SC cells): no frontier, so
# that sweeps over many settings do not get a figure per cell.
MIN_METHODS = 4


@dataclass
class Point:
    """One method in one setting: final quality, cost, pooled over its jobs and replicas."""

    label: str
    iterative: bool
    replicas: int
    steps: int | None
    latent_mcc: tuple[float, float]  # mean, std over replicas
    dictionary_mcc: tuple[float, float]
    flops_train: float  # cumulative training FLOPs per model
    flops_inference: float  # one inference pass over the test set, per model
    wall_time_s: float  # whole job (all replicas and evaluations), mean over jobs
    caveats: tuple[str, ...] = ()  # why its numbers may not be converged (aggregate.caveats)

    @property
    def flops_total(self) -> float:
        return self.flops_train + self.flops_inference

    @property
    def name(self) -> str:
        return display(self.label)


def _last(jobs: list[Job], key: str) -> float:
    values = [float(j.evaluations[-1][key]) for j in jobs if key in j.evaluations[-1]]
    return statistics.fmean(values) if values else math.nan


def points_of(by_label: dict[str, list[Job]]) -> list[Point]:
    """One point per method, one-pass encoders first, each kind in order of total FLOPs."""
    points = []
    for label in order_labels(by_label):
        members = [j for j in by_label[label] if j.evaluations]
        if not members:
            continue
        latent = [v for j in members for v in final_and_best(j)[0]]
        dictionary = [v for j in members for v in final_and_best(j, "dictionary_mcc")[0]]
        # An unfinished job (--include-unfinished) has no total yet: its time at the last
        # evaluation, the point its metrics come from.
        walls = [
            j.wall_time_s if j.wall_time_s is not None else j.evaluations[-1].get("wall_time_s")
            for j in members
        ]
        walls = [float(w) for w in walls if w is not None]
        steps = {j.evaluations[-1].get("step") for j in members}
        points.append(
            Point(
                label=label,
                iterative=is_iterative(members[0].encoder),
                replicas=len(latent),
                steps=steps.pop() if len(steps) == 1 else None,
                latent_mcc=mean_std(latent),
                dictionary_mcc=mean_std(dictionary),
                flops_train=_last(members, "flops/train_cumulative"),
                flops_inference=_last(members, "flops/inference_test"),
                wall_time_s=statistics.fmean(walls) if walls else math.nan,
                caveats=tuple(caveats(members)),
            )
        )
    return sorted(points, key=lambda p: (p.iterative, p.flops_total))


def pareto_front(costs: list[float], values: list[float]) -> list[int]:
    """Indices of the points no other point dominates (cost ≤ and value ≥, one strictly), in
    order of increasing cost. Points with a non-finite cost or value are never on the front and
    never dominate; equal points are both on it."""
    finite = [i for i in range(len(costs)) if math.isfinite(costs[i]) and math.isfinite(values[i])]
    front = [
        i
        for i in finite
        if not any(
            costs[j] <= costs[i]
            and values[j] >= values[i]
            and (costs[j] < costs[i] or values[j] > values[i])
            for j in finite
        )
    ]
    return sorted(front, key=lambda i: (costs[i], -values[i]))


def _fmt(value: float, spec: str) -> str:
    return "–" if not math.isfinite(value) else format(value, spec)


def _pm(value: tuple[float, float]) -> str:
    mean, std = value
    return "–" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def gap_statement(points: list[Point]) -> str:
    """The amortisation gap in words: the best iterative method against the best one-pass
    encoder, in test latent MCC, dictionary MCC and total FLOPs, then at matched compute."""
    scored = [p for p in points if math.isfinite(p.latent_mcc[0])]
    one_pass = [p for p in scored if not p.iterative]
    iterative = [p for p in scored if p.iterative]
    if not one_pass or not iterative:
        return "No amortisation gap to state: the setting lacks a one-pass or an iterative method."
    a = max(one_pass, key=lambda p: p.latent_mcc[0])
    b = max(iterative, key=lambda p: p.latent_mcc[0])
    ratio = b.flops_total / a.flops_total if a.flops_total > 0 else math.nan
    lines = [
        f"**Amortisation gap.** The best one-pass encoder, {a.name}, reaches test latent MCC "
        f"{_pm(a.latent_mcc)} at {a.flops_total:.3g} FLOPs per model (training + test "
        f"inference); the best iterative method, {b.name}, reaches {_pm(b.latent_mcc)} at "
        f"{b.flops_total:.3g} FLOPs ({_fmt(ratio, '.3g')}× the compute): a gap of "
        f"**{b.latent_mcc[0] - a.latent_mcc[0]:+.3f} latent MCC**{_provisional(a, b)}."
    ]
    with_dict = [p for p in scored if math.isfinite(p.dictionary_mcc[0])]
    da = max(
        (p for p in with_dict if not p.iterative), key=lambda p: p.dictionary_mcc[0], default=None
    )
    db = max((p for p in with_dict if p.iterative), key=lambda p: p.dictionary_mcc[0], default=None)
    if da is not None and db is not None:
        lines.append(
            f"Dictionary MCC: best one-pass {da.name} {_pm(da.dictionary_mcc)}, best iterative "
            f"{db.name} {_pm(db.dictionary_mcc)}: a gap of "
            f"**{db.dictionary_mcc[0] - da.dictionary_mcc[0]:+.3f}**."
        )
    matched = [p for p in iterative if p.flops_total <= a.flops_total]
    c = max(matched, key=lambda p: p.latent_mcc[0]) if matched else None
    if c is b:
        lines.append(f"{b.name} costs no more than {a.name}: the gap holds at matched compute.")
    elif c is not None:
        lines.append(
            f"At matched compute (total FLOPs ≤ {a.name}'s), the best iterative method is "
            f"{c.name}, {_pm(c.latent_mcc)} ({c.latent_mcc[0] - a.latent_mcc[0]:+.3f})."
        )
    else:
        lines.append(f"No iterative method costs as little as {a.name} in total FLOPs.")
    better = [p for p in iterative if p.latent_mcc[0] >= a.latent_mcc[0]]
    if better:
        d = min(better, key=lambda p: p.flops_total)
        lines.append(
            f"The cheapest iterative method at least as good as {a.name} is {d.name} "
            f"({_pm(d.latent_mcc)}, {d.flops_total:.3g} FLOPs, "
            f"{_fmt(d.flops_total / a.flops_total, '.3g')}× its compute)."
        )
    return " ".join(lines)


def _provisional(a: Point, b: Point) -> str:
    """`` (provisional, …)`` naming the caveats of the two points a gap compares, or nothing."""
    notes = [f"{p.name}: {'; '.join(p.caveats)}" for p in (a, b) if p.caveats]
    return f" (provisional, not converged: {' · '.join(notes)})" if notes else ""


def frontier_table(points: list[Point]) -> str:
    """Markdown table, one row per method; ✓ marks the Pareto front of latent MCC vs FLOPs."""
    front = set(pareto_front([p.flops_total for p in points], [p.latent_mcc[0] for p in points]))
    header = [
        "method", "kind", "steps", "replicas", "test latent MCC", "caveat", "dictionary MCC",
        "training FLOPs", "inference FLOPs (test set)", "total FLOPs", "wall time (s)",
        "Pareto (latent MCC vs FLOPs)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, p in enumerate(points):
        cells = [
            p.name, "iterative" if p.iterative else "one-pass",
            "–" if p.steps is None else f"{p.steps:,}", p.replicas, _pm(p.latent_mcc),
            "; ".join(p.caveats) or "–", _pm(p.dictionary_mcc), _fmt(p.flops_train, ".3g"),
            _fmt(p.flops_inference, ".3g"),
            _fmt(p.flops_total, ".3g"), _fmt(p.wall_time_s, ".1f"), "✓" if i in front else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


METRICS = [  # attribute, axis label
    ("latent_mcc", "test latent MCC (final)"),
    ("dictionary_mcc", "dictionary MCC (final, learned vs true atoms)"),
]
COSTS = [  # attribute, axis label, title
    ("flops_total", "total FLOPs per model: training + test-set inference (log scale)", "compute"),
    ("wall_time_s", "wall time of the run, all replicas and evaluations (s, log scale)", "time"),
]
KIND_MARKERS = {False: "o", True: "s"}
KIND_NAMES = {False: "one-pass (amortised) encoder", True: "iterative inference"}


LABEL_STEP = 0.008  # axes fraction a label moves down per try when it overlaps another


def _label_points(ax: plt.Axes, names: list[str], xs: list[float], ys: list[float]) -> None:
    """Name every point just below-beside it (right of it, or left near the right edge), moving
    labels down just enough not to overlap a label placed before (measured on the drawn
    figure), with a thin leader line when a label had to move: many one-pass
    encoders sit at the same FLOPs and similar MCC. Call once the figure's layout is final."""
    renderer = ax.figure.canvas.get_renderer()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[Bbox] = []  # window extents (pixels) of the labels placed so far
    order = sorted(
        (i for i in range(len(names)) if xs[i] > 0 and math.isfinite(xs[i] * ys[i])),
        key=lambda i: -ys[i],
    )
    for i in order:
        fx = math.log(xs[i] / x0) / math.log(x1 / x0)
        fy = (ys[i] - y0) / (y1 - y0) - 0.02  # clear of the front's horizontal
        left = fx > 0.7
        lx = fx + (-0.02 if left else 0.02)
        label = ax.annotate(names[i], (xs[i], ys[i]), xytext=(lx, fy), textcoords="axes fraction",
                            fontsize=7, va="center", ha="right" if left else "left")  # fmt: skip
        ly = fy
        for _ in range(200):
            box = label.get_window_extent(renderer).expanded(1.04, 1.15)
            if not any(box.overlaps(other) for other in placed):
                break
            ly -= LABEL_STEP
            label.set_position((lx, ly))
        placed.append(label.get_window_extent(renderer))
        if abs(ly - fy) > 0.015:  # moved: a leader line back to its point
            label.remove()
            ax.annotate(
                names[i], (xs[i], ys[i]), xytext=(lx, ly), textcoords="axes fraction",
                fontsize=7, va="center", ha="right" if left else "left",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
            )  # fmt: skip


def frontier_figure(setting: Setting, points: list[Point], out: Path) -> list[Path]:
    metrics = [
        (attr, axis)
        for attr, axis in METRICS
        if any(math.isfinite(getattr(p, attr)[0]) for p in points)
    ]
    fig, axes = plt.subplots(
        len(metrics), len(COSTS), figsize=(14, 5.6 * len(metrics)), squeeze=False,
        constrained_layout=True,
    )  # fmt: skip
    cmap = plt.get_cmap("tab20")
    colour = {p.label: cmap(i % 20) for i, p in enumerate(points)}
    labelled: list[tuple[plt.Axes, list[float], list[float]]] = []
    for row, (attr, axis) in enumerate(metrics):
        for col, (cost, xlabel, what) in enumerate(COSTS):
            ax = axes[row][col]
            xs = [getattr(p, cost) for p in points]
            ys = [getattr(p, attr)[0] for p in points]
            for i, p in enumerate(points):
                if not (math.isfinite(xs[i]) and xs[i] > 0 and math.isfinite(ys[i])):
                    continue
                ax.errorbar(xs[i], ys[i], yerr=getattr(p, attr)[1], color=colour[p.label],
                            marker=KIND_MARKERS[p.iterative], ms=7, capsize=3,
                            ls="none")  # fmt: skip
            front = pareto_front([x if x > 0 else math.nan for x in xs], ys)
            if front:
                fx = [xs[i] for i in front]
                fy = [ys[i] for i in front]
                ax.step(fx, fy, where="post", color="black", ls="--", lw=1.2, zorder=0)
                ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", lw=1.2)
            ax.set_xscale("log")
            ax.margins(x=0.2, y=0.08)  # room for the labels of the outermost points
            positive = [x for x in xs if x > 0]
            decades = math.log10(max(positive) / min(positive)) if positive else 0.0
            # 1-2-5 labels read well over a few decades and collide over many (FLOP axes).
            ax.xaxis.set_major_locator(
                LogLocator(subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,))
            )
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            labelled.append((ax, xs, ys))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(axis)
            name = "latent MCC" if attr == "latent_mcc" else "dictionary MCC"
            ax.set_title(f"{name} vs {what}")
            ax.grid(alpha=0.3, which="both")
    handles = [
        plt.Line2D(
            [], [], marker=KIND_MARKERS[k], ls="none", color="0.4", ms=7, label=KIND_NAMES[k]
        )
        for k in (False, True)
    ]
    handles.append(
        plt.Line2D(
            [],
            [],
            color="black",
            ls="--",
            marker="o",
            mfc="none",
            ms=11,
            label="Pareto front (cheaper or as cheap and better)",
        )
    )
    fig.legend(handles=handles, fontsize=9, loc="outside lower center", ncol=3)
    replicas = sorted({p.replicas for p in points})
    fig.suptitle(
        f"Quality vs cost frontier · {setting_title(setting)}\n"
        f"one point per method: final value, mean ± 1 std over {'/'.join(map(str, replicas))} "
        "replicas"
    )
    # Labels are placed by their drawn size: lay the figure out first, then keep it as it is.
    fig.canvas.draw()
    for ax, xs, ys in labelled:
        _label_points(ax, [p.name for p in points], xs, ys)
    fig.set_layout_engine("none")
    return save(fig, out, f"frontier_{setting_slug(setting)}")


def frontier_report(jobs: list[Job], out: Path) -> list[Path]:
    """Figures and ``frontier.md`` for every setting that compares enough methods on one data
    law (a sweep over data conditions pools unlike data under one label: no frontier)."""
    paths: list[Path] = []
    sections: list[str] = []
    for setting, by_label in group(jobs).items():
        members = [j for jobs_ in by_label.values() for j in jobs_]
        if len(by_label) < MIN_METHODS or data_conditions(members):
            continue
        points = points_of(by_label)
        if len(points) < MIN_METHODS:
            continue
        paths += frontier_figure(setting, points, out)
        sections.append(
            f"## {setting_title(setting)}\n\n{gap_statement(points)}\n\n"
            f"{frontier_table(points)}\n\n![frontier](frontier_{setting_slug(setting)}.png)\n"
        )
    if sections:
        path = out / "frontier.md"
        body = "\n".join(sections)
        path.write_text(
            "# Quality vs cost frontier\n\n"
            "Final test latent MCC and dictionary MCC (mean ± std over replicas); FLOPs per model: "
            "training (cumulative) and one inference pass over the test set; wall time: the whole "
            "run (all replicas and evaluations). Pareto: no method is as cheap or cheaper and "
            f"better.\n\n{body}"
        )
        paths.append(path)
    return paths
