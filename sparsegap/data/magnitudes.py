"""Values of the active sources: a base law, an optional affine map to a chosen mean and standard
deviation, and optional per-feature scales.

value = h_i · (μ + σ · (v − μ_law) / σ_law), v drawn from ``data.magnitude``; μ = ``magnitude_mean``
and σ = ``magnitude_std`` (null: the law's own, so the map is the identity by default), and
h_i = exp(η·ξ_i − η²/2), ξ_i ~ N(0, 1) once per data set, η = ``magnitude_heterogeneity``
(mean-one log-normal scales; η = 0: h_i = 1). Feature i thus has mean h_i·μ and std h_i·σ. An
affine map of a non-negative law can produce negative values when σ/σ_law > μ/μ_law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# (mean, standard deviation) of each base law
LAW_MOMENTS = {
    "abs_normal": (math.sqrt(2 / math.pi), math.sqrt(1 - 2 / math.pi)),
    "normal": (0.0, 1.0),
    "exponential": (1.0, 1.0),
    "uniform": (0.5, math.sqrt(1 / 12)),
}


def sample_magnitudes(law: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Values of the active sources. ``abs_normal`` is the authors' code (|N(0,1)|, non-negative);
    ``normal`` is what the paper's text says; ``exponential`` (rate 1) and ``uniform`` (0, 1] are
    further non-negative laws."""
    if law == "abs_normal":
        return torch.randn(shape, generator=generator).abs_()
    if law == "normal":
        return torch.randn(shape, generator=generator)
    if law == "exponential":
        return torch.empty(shape).exponential_(1.0, generator=generator)
    if law == "uniform":
        return 1.0 - torch.rand(shape, generator=generator)
    raise ValueError(f"unknown magnitude law {law!r}")


@dataclass(frozen=True)
class MagnitudeLaw:
    law: str
    scale: float  # σ / σ_law
    shift: float  # μ − scale·μ_law
    feature_scale: Tensor | None  # (N,) h_i, or None when every h_i = 1

    @classmethod
    def from_config(cls, cfg, generator: torch.Generator) -> MagnitudeLaw:
        mu, sd = LAW_MOMENTS.get(cfg.magnitude, (0.0, 1.0))
        mean = getattr(cfg, "magnitude_mean", None)
        std = getattr(cfg, "magnitude_std", None)
        mean = mu if mean is None else float(mean)
        std = sd if std is None else float(std)
        scale = std / sd
        eta = float(getattr(cfg, "magnitude_heterogeneity", 0.0))
        h = None
        if eta > 0:
            h = torch.exp(eta * torch.randn(cfg.N, generator=generator) - eta * eta / 2)
        return cls(cfg.magnitude, scale, mean - scale * mu, h)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0 and self.feature_scale is None

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return sample_magnitudes(self.law, shape, generator)

    def per_feature(self, values: Tensor, feature: Tensor) -> Tensor:
        """Apply the affine map and the scale of each value's feature (no-op by default)."""
        if self.scale != 1.0 or self.shift != 0.0:
            values = values * self.scale + self.shift
        if self.feature_scale is not None:
            values = values * self.feature_scale[feature]
        return values
