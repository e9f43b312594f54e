"""Planted features for autointerp tests: a word-level vocabulary and a feature source in which
latent i fires exactly on word i (no language model needed)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lm_helpers import WORDS, corpus_lines
from omegaconf import DictConfig

from sparsegap.autointerp.config import register_configs
from sparsegap.autointerp.pipeline import FeatureSource

CONF = Path(__file__).resolve().parents[1] / "conf" / "autointerp"
VOCAB = [f" {w}" for w in sorted(set(WORDS))]


def compose_cfg(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["run=planted", "logger=none", *overrides])


def planted_source(latents: int | None = None) -> FeatureSource:
    """Latent i fires on word i with activation 1 + (position mod 5) / 5; latents beyond the
    vocabulary never fire."""
    index = {w: i for i, w in enumerate(VOCAB)}
    latents = latents or len(VOCAB)

    def activations(tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1]).remainder(5).float() / 5 + 1
        hot = torch.nn.functional.one_hot(tokens, latents).float()
        return hot * positions[None, :, None]

    g = torch.Generator().manual_seed(0)
    return FeatureSource(
        activations=activations,
        directions=torch.randn(16, latents, generator=g),
        unembed=torch.randn(16, len(VOCAB), generator=g),
        vocab=VOCAB,
        encode=lambda texts: [[index[f" {w}"] for w in text.split()] for text in texts],
        separator=None,
        label="planted",
    )


def documents(n: int = 200) -> list[str]:
    return corpus_lines(n)
