"""Learned-dictionary Gram matrices |DᵀD| (paper App. C, Figs. 9–11).

One figure per setting (scenario, N, M, K, λ) whose jobs learn a number of latents other than
the N true sources (``encoder.latents``), from each run's ``model.pt``: a row per method, a
column per latent count. Off-diagonal values near 1 mean two latents share a direction
(superposition); an identity means orthogonal atoms (impossible beyond M atoms in M dimensions).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from sparsegap.report.aggregate import Setting, fmt_l1, setting_of, setting_title
from sparsegap.report.collect import Job, display, label_of
from sparsegap.report.figures import save

# What tells two settings of one scenario apart in a file name: setting index → name prefix.
_SLUG = {1: "N", 2: "M", 3: "K", 4: "l1-"}


def _gram(job: Job) -> torch.Tensor | None:
    path = job.path / "model.pt"
    if not path.exists():
        return None
    atoms = torch.load(path, map_location="cpu", weights_only=True).get("decoder")
    if atoms is None:
        return None
    first = atoms[0] / atoms[0].norm(dim=0, keepdim=True).clamp_min(1e-12)
    return (first.T @ first).abs()


def _method(job: Job) -> str:
    """The job's method label without its latent count (that is the figure's column)."""
    config = {**job.config, "encoder": {**job.config.get("encoder", {}), "latents": None}}
    return label_of(config) + job.label_suffix


def _latents(job: Job) -> int:
    value = job.config.get("encoder", {}).get("latents")
    return int(value if value is not None else job.regime[0])


def gram_figures(jobs: list[Job], out: Path) -> list[Path]:
    """``gram_<scenario>`` per setting with latent counts other than N; when a scenario has
    several such settings, each file name adds the values that tell them apart
    (``gram_unknown_N32_M8``)."""
    by_setting: dict[Setting, list[Job]] = defaultdict(list)
    for job in jobs:
        by_setting[setting_of(job)].append(job)
    drawn = {
        setting: members
        for setting, members in by_setting.items()
        if any(_latents(j) != setting[1] for j in members)
    }
    paths: list[Path] = []
    for setting, members in sorted(drawn.items(), key=lambda item: str(item[0])):
        siblings = [s for s in drawn if s[0] == setting[0]]
        varying = [i for i in _SLUG if len({s[i] for s in siblings}) > 1]
        suffix = "".join(f"_{_SLUG[i]}{fmt_l1(setting[i])}" for i in varying)
        paths += _figure(setting, members, out, f"gram_{setting[0]}{suffix}")
    return paths


def _figure(setting: Setting, members: list[Job], out: Path, stem: str) -> list[Path]:
    grams = {(_method(j), _latents(j)): g for j in members if (g := _gram(j)) is not None}
    if not grams:
        return []
    methods = sorted({m for m, _ in grams})
    latents = sorted({count for _, count in grams})
    fig, axes = plt.subplots(
        len(methods), len(latents), figsize=(3.6 * len(latents) + 1.2, 3.4 * len(methods) + 0.9),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    image = None
    for r, method in enumerate(methods):
        for c, count in enumerate(latents):
            ax = axes[r][c]
            gram = grams.get((method, count))
            if gram is None:
                ax.axis("off")
                continue
            image = ax.imshow(gram.numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{display(method)}, {count} latents", fontsize=9)
            ax.set_xlabel("latent")
            ax.set_ylabel("latent")
            for axis in (ax.xaxis, ax.yaxis):  # latents are whole numbers
                axis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"|DᵀD| of the learned decoder (replica 0)\n{setting_title(setting)}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="|cosine| between atoms")
    return save(fig, out, stem)
