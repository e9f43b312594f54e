"""Saved model state and the App. C |DᵀD| figure."""

from __future__ import annotations

import torch
from helpers import compose_config

from sparsegap.__main__ import run
from sparsegap.report.__main__ import make_report


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
