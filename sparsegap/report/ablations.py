"""Ablation figures: MLP hidden width (paper App. D, Fig. 12) and encoder biases (App. E, Fig. 13).

Both summarise *final* values (per replica, at the last evaluation; mean ± std over the replicas
pooled from every job of a method), because the question is where training ends up, not how:

- ``width_<scenario>``: when MLP jobs span at least three hidden widths, test latent MCC,
  dictionary MCC, test reconstruction MSE and test L0 against the hidden width (log scale), one
  line per regime (N, M, K).
- ``bias_<scenario>``: when jobs of one method and setting differ only in ``encoder.bias``, the
  same four metrics as paired bars (without / with biases) per method.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from sparsegap.report.aggregate import final_and_best, mean_std, order_labels
from sparsegap.report.collect import Job, display, label_of
from sparsegap.report.figures import save

# key, panel title, axis label (units: MCC in [0, 1], MSE per coordinate, L0 in active latents)
ABLATION_METRICS = [
    ("latent_mcc/test", "latent MCC", "test latent MCC"),
    ("dictionary_mcc", "dictionary MCC", "dictionary MCC"),
    ("loss/mse/test", "reconstruction", "test MSE per coordinate"),
    ("l0/test", "sparsity", "test L0 (active latents per sample)"),
]
MIN_WIDTHS = 3  # fewer hidden widths than this is a method comparison, not a width ablation


def final_stats(jobs: list[Job], key: str) -> tuple[float, float]:
    """Mean ± std over every replica of ``jobs`` of ``key`` at the last evaluation."""
    return mean_std([v for job in jobs for v in final_and_best(job, key)[0]])


def _present(jobs: list[Job]) -> list[tuple[str, str, str]]:
    return [m for m in ABLATION_METRICS if any(final_and_best(j, m[0])[0] for j in jobs)]


def width_figures(jobs: list[Job], out: Path) -> list[Path]:
    paths: list[Path] = []
    for scenario in sorted({str(j.scenario) for j in jobs}):
        mlps = [j for j in jobs if str(j.scenario) == scenario and j.encoder == "mlp"]
        by_regime: dict[Any, dict[int, list[Job]]] = defaultdict(lambda: defaultdict(list))
        for job in mlps:
            by_regime[job.regime][int(job.config["encoder"]["hidden"])].append(job)
        if not any(len(widths) >= MIN_WIDTHS for widths in by_regime.values()):
            continue
        metrics = _present(mlps)
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2),
                                 squeeze=False, constrained_layout=True)  # fmt: skip
        for ax, (key, title, axis) in zip(axes[0], metrics, strict=True):
            for regime in sorted(by_regime, key=str):
                widths = sorted(by_regime[regime])
                stats = [final_stats(by_regime[regime][w], key) for w in widths]
                n, m, k = regime
                ax.errorbar(widths, [s[0] for s in stats], yerr=[s[1] for s in stats],
                            marker="o", ms=4, capsize=2, label=f"N={n}, M={m}, K={k}")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xlabel("MLP hidden width (log scale)")
            ax.set_ylabel(axis)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if key.startswith("loss"):
                ax.set_yscale("log")
        axes[0][0].legend(fontsize=8, title="regime")
        fig.suptitle(
            f"MLP encoder width ablation, {scenario} scenario: final values "
            "(mean ± std over replicas)"
        )
        paths += save(fig, out, f"width_{scenario}")
    return paths


def bias_groups(jobs: list[Job]) -> dict[str, dict[str, dict[bool, list[Job]]]]:
    """scenario → method → bias → jobs, for methods whose jobs have both bias settings."""
    groups: dict[str, dict[str, dict[bool, list[Job]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for job in jobs:
        bias = bool(job.config.get("encoder", {}).get("bias", False))
        groups[str(job.scenario)][label_of(job.config)][bias].append(job)
    return {
        scenario: {m: dict(b) for m, b in methods.items() if len(b) == 2}
        for scenario, methods in groups.items()
        if any(len(b) == 2 for b in methods.values())
    }


def bias_figures(jobs: list[Job], out: Path) -> list[Path]:
    paths: list[Path] = []
    for scenario, methods in sorted(bias_groups(jobs).items()):
        labels = order_labels(methods)
        members = [j for m in labels for js in methods[m].values() for j in js]
        metrics = _present(members)
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2),
                                 squeeze=False, constrained_layout=True)  # fmt: skip
        x = np.arange(len(labels))
        width = 0.38
        for ax, (key, title, axis) in zip(axes[0], metrics, strict=True):
            for offset, bias, colour in ((-width / 2, False, "tab:blue"),
                                         (width / 2, True, "tab:orange")):  # fmt: skip
                stats = [final_stats(methods[m][bias], key) for m in labels]
                ax.bar(x + offset, [s[0] for s in stats], width, yerr=[s[1] for s in stats],
                       capsize=3, color=colour,
                       label="with encoder biases" if bias else "without biases")  # fmt: skip
            ax.set_xticks(x, [display(m) for m in labels], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel(axis)
            ax.set_title(title)
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(
            f"Encoder bias ablation, {scenario} scenario: final values (mean ± std over replicas)"
        )
        paths += save(fig, out, f"bias_{scenario}")
    return paths
