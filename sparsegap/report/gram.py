"""Learned-dictionary Gram matrices |DᵀD| (paper App. C, Figs. 9–11).

Drawn when the compared jobs of one scenario differ in the number of learned latents
(``encoder.latents`` below, equal to or above ``data.N``), from each run's ``model.pt``.
Off-diagonal values near 1 mean two latents share a direction (superposition); an identity means
orthogonal atoms (impossible beyond M atoms in M dimensions).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from sparsegap.report.collect import Job, label_of
from sparsegap.report.figures import save


def _gram(job: Job) -> torch.Tensor | None:
    path = job.path / "model.pt"
    if not path.exists():
        return None
    atoms = torch.load(path, map_location="cpu", weights_only=True).get("decoder")
    if atoms is None:
        return None
    first = atoms[0] / atoms[0].norm(dim=0, keepdim=True).clamp_min(1e-12)
    return (first.T @ first).abs()


def gram_figures(jobs: list[Job], out: Path) -> list[Path]:
    paths: list[Path] = []
    for scenario in sorted({str(j.scenario) for j in jobs}):
        members = [j for j in jobs if str(j.scenario) == scenario]
        latents = sorted({_latents(j) for j in members})
        if len(latents) < 2:
            continue
        grams = {(label_of({**j.config, "encoder": {**j.config["encoder"], "latents": None}}),
                  _latents(j)): g for j in members if (g := _gram(j)) is not None}  # fmt: skip
        if not grams:
            continue
        methods = sorted({m for m, _ in grams})
        fig, axes = plt.subplots(
            len(methods), len(latents), figsize=(3.2 * len(latents), 3.0 * len(methods)),
            squeeze=False, constrained_layout=True,
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
                ax.set_title(f"{method}, {count} latents", fontsize=9)
                ax.set_xlabel("latent")
                ax.set_ylabel("latent")
        n = members[0].regime[0]
        fig.suptitle(
            f"|DᵀD| of the learned decoder (replica 0), {scenario} scenario, N={n} true sources"
        )
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.6, label="|cosine| between atoms")
        paths += save(fig, out, f"gram_{scenario}")
    return paths


def _latents(job: Job) -> int:
    value = job.config.get("encoder", {}).get("latents")
    return int(value if value is not None else job.regime[0])
