"""The report's figures (matplotlib, Agg backend), each saved as PNG and PDF.

- ``curves_<setting>``: test latent MCC and dictionary MCC against the training step and against
  cumulative training FLOPs, one line per method with a mean ± std band over replicas (paper
  Figs. 2–4).
- ``regimes_<final|best>``: when the jobs span several (N, M, K) regimes, the test latent MCC of
  each method minus the SAE's over M × N, one panel per K, the cells with M ≥ K·ln(N/K) (enough
  measurements for compressed sensing) outlined (paper Fig. 5).
- ``pareto_<scenario…>``: when jobs differ in ``l1_coeff``, test MSE and test latent MCC against
  L0 and L1 of the codes, one line per method through its λ values (paper Fig. 6).
- ``gap_<metric>``: when jobs differ in data keys other than N, M, K (support law, correlation,
  hierarchy, noise…), per data condition the best iterative method (sparse coding, SAE + ITO)
  minus the SAE, and the MLP minus the SAE, in final test latent MCC; the same for dictionary MCC
  with sparse coding alone (SAE + ITO keeps the SAE's dictionary).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from sparsegap.metrics import L0_THRESHOLD
from sparsegap.report.aggregate import (
    BASELINE,
    Setting,
    above_bound,
    curve,
    final_and_best,
    group,
    mean_std,
    order_labels,
    setting_slug,
    setting_title,
)
from sparsegap.report.collect import Job, display, is_iterative

FORMATS = ("png", "pdf")
CURVES_INLINE = 6  # more settings than this: curve figures go to <out>/curves/


def colours(labels: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(order_labels(labels))}


def save(fig: plt.Figure, out: Path, stem: str, tight: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = out / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight" if tight else None)
        paths.append(path)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------- training curves (Figs. 2–4)

CURVE_METRICS = [  # key, title, axis label
    ("latent_mcc/test", "latent MCC", "latent MCC (test codes vs true codes)"),
    ("dictionary_mcc", "dictionary MCC", "dictionary MCC (learned vs true atoms)"),
]


def curve_figures(jobs: list[Job], out: Path, palette: dict[str, Any]) -> list[Path]:
    settings = group(jobs)
    if len(settings) > CURVES_INLINE:  # e.g. a regime sweep: keep the report folder readable
        out = out / "curves"
    paths: list[Path] = []
    for setting, by_label in settings.items():
        paths += _curve_figure(setting, by_label, out, palette)
    return paths


def _curve_figure(
    setting: Setting, by_label: dict[str, list[Job]], out: Path, palette: dict[str, Any]
) -> list[Path]:
    metrics = [
        (key, name, axis)
        for key, name, axis in CURVE_METRICS
        if any(curve(jobs, key) is not None for jobs in by_label.values())
    ]
    if not metrics:
        return []
    # A fixed layout: constrained layout costs 2-3x the drawing time, and regime sweeps draw many.
    height = 3.9 * len(metrics) + 2.0
    fig, axes = plt.subplots(len(metrics), 2, figsize=(12, height), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 1.0 / height, bottom=1.2 / height,
                        hspace=0.4, wspace=0.2)  # fmt: skip
    replicas = set()
    for row, (key, name, axis) in enumerate(metrics):
        ax_step, ax_flops = axes[row]
        for label in order_labels(by_label):
            c = curve(by_label[label], key)
            if c is None:
                continue
            replicas.add(c.replicas)
            colour = palette[label]
            text = f"{display(label)} (n={c.replicas})"
            ax_step.plot(c.steps, c.mean, color=colour, label=text, lw=1.8)
            ax_step.fill_between(c.steps, c.mean - c.std, c.mean + c.std, color=colour, alpha=0.2)
            keep = np.isfinite(c.flops) & (c.flops > 0)  # step 0 has no training FLOPs
            ax_flops.plot(c.flops[keep], c.mean[keep], color=colour, lw=1.8)
            ax_flops.fill_between(
                c.flops[keep],
                (c.mean - c.std)[keep],
                (c.mean + c.std)[keep],
                color=colour,
                alpha=0.2,
            )
        ax_step.set_xlabel("training step")
        ax_step.set_title(f"{name} vs training steps")
        ax_flops.set_xscale("log")
        ax_flops.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks are slow
        ax_flops.set_xlabel("cumulative training FLOPs per model (log scale)")
        ax_flops.set_title(f"{name} vs training compute")
        for ax in (ax_step, ax_flops):
            ax.set_ylabel(axis)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), fontsize=9,
               ncol=min(len(labels), 4), title="method (n = replicas pooled)")  # fmt: skip
    fig.suptitle(f"{setting_title(setting)}\nlines: mean over replicas · bands: ± 1 std", y=0.995)
    return save(fig, out, f"curves_{setting_slug(setting)}")


# ---------------------------------------------------------------- regimes heatmaps (Fig. 5)


def regime_values(jobs: list[Job], metric: str) -> dict[tuple[str, Any, Any, Any], float]:
    """(label, N, M, K) → mean over replicas of the final or best test latent MCC."""
    pooled: dict[tuple[str, Any, Any, Any], list[float]] = defaultdict(list)
    for job in jobs:
        final, best = final_and_best(job)
        pooled[(job.label, *job.regime)] += final if metric == "final" else best
    return {k: mean_std(v)[0] for k, v in pooled.items() if v}


def regime_heatmaps(
    jobs: list[Job], out: Path, metric: str = "final", stem: str | None = None
) -> list[Path]:
    values = regime_values(jobs, metric)
    labels = order_labels({k[0] for k in values})
    ns = sorted({k[1] for k in values})
    ms = sorted({k[2] for k in values})
    ks = sorted({k[3] for k in values})
    relative = BASELINE in labels and len(labels) > 1
    rows = [BASELINE, *[lab for lab in labels if lab != BASELINE]] if relative else labels
    diffs = []
    for label in rows[1:] if relative else []:
        for (lab, n, m, k), v in values.items():
            base = values.get((BASELINE, n, m, k))
            if lab == label and base is not None:
                diffs.append(abs(v - base))
    span = max([0.05, *[d for d in diffs if math.isfinite(d)]])
    width = max(7.5 / len(ks), 0.9 * len(ns) + 1.8)
    fig, axes = plt.subplots(
        len(rows),
        len(ks),
        figsize=(width * len(ks), 2.9 * len(rows) + 1.0),
        squeeze=False,
        constrained_layout=True,
    )
    what = "final" if metric == "final" else "best (maximum during training)"
    for r, label in enumerate(rows):
        absolute = not relative or label == BASELINE
        for c, k in enumerate(ks):
            ax = axes[r][c]
            grid = np.full((len(ms), len(ns)), np.nan)
            for i, m in enumerate(ms):
                for j, n in enumerate(ns):
                    v = values.get((label, n, m, k))
                    if v is not None and not absolute:
                        base = values.get((BASELINE, n, m, k))
                        v = v - base if base is not None else None
                    grid[i, j] = np.nan if v is None else v
            cmap = plt.get_cmap("viridis" if absolute else "RdBu").with_extremes(bad="0.85")
            vmin, vmax = (0.0, 1.0) if absolute else (-span, span)
            image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            for i in range(len(ms)):
                for j in range(len(ns)):
                    v = grid[i, j]
                    text = "n/a" if np.isnan(v) else (f"{v:.2f}" if absolute else f"{v:+.2f}")
                    dark = not np.isnan(v) and (v < 0.5 if absolute else abs(v) > 0.6 * span)
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")  # fmt: skip
            # The axes are categorical (one cell per swept value), so the bound is shown per
            # cell, not as a curve whose position between rows would mean nothing.
            for i, m in enumerate(ms):
                for j, n in enumerate(ns):
                    if n > k and above_bound(n, m, k):
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               edgecolor="black", lw=2.0))  # fmt: skip
            ax.set_xlim(-0.5, len(ns) - 0.5)
            ax.set_ylim(-0.5, len(ms) - 0.5)
            ax.set_xticks(range(len(ns)), [str(n) for n in ns])
            ax.set_yticks(range(len(ms)), [str(m) for m in ms])
            ax.set_xlabel("N (true sources)")
            ax.set_ylabel("M (measurements)")
            name = display(label)
            title = f"{name}: MCC" if absolute else f"{name} − SAE"
            ax.set_title(f"{title} · K={k} active", fontsize=10)
        bar = fig.colorbar(image, ax=list(axes[r]), shrink=0.9)
        bar.set_label("test latent MCC" if absolute else "Δ test latent MCC\n(method − SAE)")
    fig.suptitle(
        f"Test latent MCC, {what}, over regimes (N, M, K), one panel per K\n"
        f"{'top: the SAE; below: each method minus the SAE (blue = better)' if relative else ''}"
        "\noutlined: M ≥ K·ln(N/K), enough measurements for compressed sensing"
        " · grey: not run or failed"
    )
    return save(fig, out, stem or f"regimes_{metric}", tight=True)


# ---------------------------------------------------------------- sparsity Pareto (Fig. 6)

PARETO_Y = [
    ("loss/mse/test", "reconstruction MSE (test)"),
    ("latent_mcc/test", "latent MCC (test)"),
]
PARETO_X = [
    ("l0/test", "L0: non-zero codes per sample (test)"),
    (
        "l0_thresholded/test",
        f"L0: codes above {L0_THRESHOLD:g} × the sample's largest |code| (test)",
    ),
    ("l1/test", "L1: sum of |codes| per sample (test)"),
]


def pareto_figures(jobs: list[Job], out: Path, palette: dict[str, Any]) -> list[Path]:
    by_context: dict[tuple[Any, ...], list[Job]] = defaultdict(list)
    for job in jobs:
        by_context[(job.scenario, *job.regime)].append(job)
    paths: list[Path] = []
    for (scenario, n, m, k), members in sorted(by_context.items(), key=lambda kv: str(kv[0])):
        if len({j.l1_coeff for j in members}) < 2:
            continue
        # Runs from before the thresholded L0 existed lack its column.
        xs_shown = [x for x in PARETO_X if any(x[0] in j.evaluations[-1] for j in members)]
        fig, axes = plt.subplots(
            2, len(xs_shown), figsize=(5.8 * len(xs_shown), 8.5), squeeze=False,
            constrained_layout=True,
        )  # fmt: skip
        labels: dict[Any, list[tuple[str, float, float, Any]]] = defaultdict(list)
        for label in order_labels({j.label for j in members}):
            points = []
            for l1 in sorted({j.l1_coeff for j in members if j.label == label}):
                runs = [j for j in members if j.label == label and j.l1_coeff == l1]
                stats = {}
                for key, _ in xs_shown + PARETO_Y:
                    stats[key] = mean_std([v for j in runs for v in final_and_best(j, key)[0]])
                points.append((l1, stats))
            for r, (ykey, yname) in enumerate(PARETO_Y):
                for c, (xkey, xname) in enumerate(xs_shown):
                    ax = axes[r][c]
                    xs = [p[1][xkey] for p in points]
                    ys = [p[1][ykey] for p in points]
                    ax.errorbar([x[0] for x in xs], [y[0] for y in ys],
                                xerr=[x[1] for x in xs], yerr=[y[1] for y in ys],
                                color=palette[label], marker="o", ms=4, capsize=2,
                                label=display(label))  # fmt: skip
                    labels[ax] += [(f"{l1:g}", x[0], y[0], palette[label])
                                   for (l1, _), x, y in zip(points, xs, ys, strict=True)
                                   if math.isfinite(x[0]) and math.isfinite(y[0])]  # fmt: skip
                    ax.set_xlabel(xname)
                    ax.set_ylabel(yname)
                    ax.grid(alpha=0.3)
                    if ykey.startswith("loss"):
                        ax.set_yscale("log")
        for ax, items in labels.items():
            _label_lambdas(ax, items)
        axes[0][0].legend(fontsize=8, title="method")
        fig.suptitle(
            f"Sparsity trade-off, {scenario} scenario · N={n}, M={m}, K={k}\n"
            "final values, one point per L1 coefficient λ (mean ± std over replicas)"
        )
        paths += save(fig, out, f"pareto_{scenario}_N{n}_M{m}_K{k}", tight=True)
    return paths


def _label_lambdas(ax: plt.Axes, items: list[tuple[str, float, float, Any]]) -> None:
    """One λ label per spot: points of a method closer than ~12 px share one label
    (``λ=0.003, 0.01``), so coinciding points do not print their values over each other."""
    ax.autoscale_view()
    spots: list[tuple[np.ndarray, Any, float, float, list[str]]] = []
    for text, x, y, colour in items:
        where = ax.transData.transform((x, y))
        near = next((s for s in spots if s[1] == colour and np.hypot(*(s[0] - where)) < 12), None)
        if near is None:
            spots.append((where, colour, x, y, [text]))
        else:
            near[4].append(text)
    for _, colour, x, y, texts in spots:
        ax.annotate(f"λ={', '.join(texts)}", (x, y), fontsize=8, color=colour, xytext=(5, 4),
                    textcoords="offset points",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.8})  # fmt: skip


# ---------------------------------------------------------------- gap per data condition


def gap_metrics(encoders: list[str]) -> list[tuple[str, str, list[str]]]:
    """key, name and the iterative methods among ``encoders`` compared with the SAE: SAE + ITO
    keeps the SAE's dictionary, so it is left out of the dictionary MCC comparison."""
    iterative = [e for e in sorted(encoders) if is_iterative(e)]
    return [
        ("latent_mcc/test", "test latent MCC", iterative),
        ("dictionary_mcc", "dictionary MCC", [e for e in iterative if e != "sae_ito"]),
    ]


NOT_CONDITIONS = ("data.N", "data.M", "data.K", "data.seed")


def data_conditions(jobs: list[Job]) -> list[str]:
    """The ``data.*`` keys (other than N, M, K and the seed) whose values differ across jobs."""
    from sparsegap.report.collect import _flatten

    flats = [_flatten(j.config) for j in jobs]
    keys = set.union(*(set(f) for f in flats)) if flats else set()
    return sorted(
        k
        for k in keys
        if k.startswith("data.")
        and k not in NOT_CONDITIONS
        and len({repr(f.get(k)) for f in flats}) > 1
    )


SHORT_KEYS = {
    "frequencies": "freq",
    "correlation_rank": "corr",
    "correlation_scale": "ρ",
    "hierarchy_depth": "depth",
    "hierarchy_branching": "branch",
    "snr_db": "SNR dB",
    "magnitude_heterogeneity": "heterog",
}


def _condition_label(keys: list[str], values: tuple[Any, ...]) -> str:
    def short(key: str) -> str:
        name = key.removeprefix("data.")
        return SHORT_KEYS.get(name, name)

    def value(v: Any) -> str:
        return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    return "\n".join(f"{short(k)}={value(v)}" for k, v in zip(keys, values, strict=True))


def gap_figures(jobs: list[Job], out: Path) -> list[Path]:
    """Grouped bars, one group per data condition: best iterative − SAE and MLP − SAE (final
    values, mean over replicas; error bars: std of the method's replicas). Jobs are pooled per
    condition and encoder name (all MLP widths, scenarios and regimes under the root together):
    point it at one sweep that varies data laws only."""
    from sparsegap.report.collect import _flatten

    keys = data_conditions(jobs)
    if not keys:
        return []
    cells: dict[tuple[Any, ...], dict[str, list[Job]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        flat = _flatten(job.config)
        cells[tuple(flat.get(k) for k in keys)][str(job.encoder)].append(job)
    conditions = sorted(cells, key=lambda c: [str(v) for v in c])
    paths: list[Path] = []
    encoders = sorted({e for cell in cells.values() for e in cell})
    for key, name, compared in gap_metrics(encoders):
        if not compared:
            continue
        first = "best iterative − SAE" if len(compared) > 1 else f"{display(compared[0])} − SAE"
        bars: dict[str, list[tuple[float, float]]] = {first: [], "MLP − SAE": []}
        for condition in conditions:
            stats = {
                enc: mean_std([v for j in members for v in final_and_best(j, key)[0]])
                for enc, members in cells[condition].items()
            }
            sae = stats.get(BASELINE, (math.nan, math.nan))[0]
            iterative = [stats[e] for e in compared if e in stats and math.isfinite(stats[e][0])]
            best = max(iterative, default=(math.nan, math.nan))
            mlp = stats.get("mlp", (math.nan, math.nan))
            bars[first].append((best[0] - sae, best[1]))
            bars["MLP − SAE"].append((mlp[0] - sae, mlp[1]))
        if all(not math.isfinite(v) for series in bars.values() for v, _ in series):
            continue  # e.g. no dictionary MCC (known-dictionary scenario)
        x = np.arange(len(conditions))
        width = 0.38
        fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(conditions) + 2), 5.2))
        for i, (label, series) in enumerate(bars.items()):
            ax.bar(x + (i - 0.5) * width, [v for v, _ in series], width,
                   yerr=[e for _, e in series], capsize=2, label=label,
                   color=("tab:green", "tab:orange")[i])  # fmt: skip
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, [_condition_label(keys, c) for c in conditions], fontsize=7)
        ax.set_ylabel(f"Δ final {name} vs SAE")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(
            f"Amortisation gap per data condition: {name}\n"
            "> 0: the method beats the SAE (mean over replicas; bars: std of the method)"
        )
        paths += save(fig, out, f"gap_{key.split('/')[0]}", tight=True)
    return paths
