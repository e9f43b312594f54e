"""Saved model state and the App. C |DᵀD| figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from helpers import compose_config

from sparsegap.__main__ import run
from sparsegap.report.__main__ import make_report
from sparsegap.report.collect import load_jobs
from sparsegap.report.gram import gram_figures


def test_run_saves_model_state_and_report_draws_gram(tmp_path):
    for latents in (10, 24):
        run(compose_config([f"encoder.latents={latents}", "steps=20"]), tmp_path / f"L{latents}")
    state = torch.load(tmp_path / "L24" / "model.pt", weights_only=True)
    assert state["decoder"].shape == (2, 8, 24)  # replicas, M, latents
    assert "linear.weight" in state["encoder"]
    written = make_report(tmp_path, out=tmp_path / "report")
    names = {p.name for p in written["figures"]}
    assert {"gram_unknown.png", "gram_unknown.pdf"} <= names
    assert (tmp_path / "report" / "gram_unknown.png").stat().st_size > 10_000


def test_no_gram_figure_when_latent_counts_agree(tmp_path):
    for seed in (0, 1):
        run(compose_config([f"seed={seed}", "steps=20"]), tmp_path / f"s{seed}")
    written = make_report(tmp_path, out=tmp_path / "report")
    assert not any(p.name.startswith("gram_") for p in written["figures"])


def test_gram_figures_per_setting_only_where_latents_differ_from_n(tmp_path):
    runs = {  # folder: N, M, latents (None: N)
        "n16m8": (16, 8, None), "n16m8-wide": (16, 8, 24),
        "n16m12": (16, 12, None), "n16m12-wide": (16, 12, 24),
        "n32m8": (32, 8, None), "n32m8-wide": (32, 8, 48),
        "n24m8": (24, 8, None),  # N varies, but its latents equal N: no figure of its own
    }  # fmt: skip
    for folder, (n, m, latents) in runs.items():
        extra = [] if latents is None else [f"encoder.latents={latents}"]
        run(compose_config([f"data.N={n}", f"data.M={m}", "steps=10", *extra]), tmp_path / folder)
    jobs = load_jobs(tmp_path)
    written = gram_figures(jobs, tmp_path / "report")
    stems = sorted({p.stem for p in written})
    assert stems == ["gram_unknown_N16_M12", "gram_unknown_N16_M8", "gram_unknown_N32_M8"]
    # each figure: its own setting's N in the title, its latent counts as columns
    titles = {}
    original = plt.Figure.suptitle

    def spy(fig, text, **kwargs):
        titles[len(titles)] = text
        return original(fig, text, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Figure, "suptitle", spy)
        gram_figures([j for j in jobs if j.regime[0] == 32], tmp_path / "n32")
    assert "N=32 sources, M=8" in titles[0]
    assert not (tmp_path / "n32" / "gram_unknown_N16_M8.png").exists()
    assert (tmp_path / "n32" / "gram_unknown.png").stat().st_size > 10_000  # one setting: no suffix
