"""Synthetic sparse data with known codes and dictionary (paper §3.2, authors' code defaults).

Layout convention used across sparsegap: a batch is a matrix with **one column per sample**, as in
the sparse-coding literature (X = D·S). X is (M, B), codes are (N, B), the dictionary is (M, N)
with unit-norm columns (atoms). Besides matching the maths, this keeps the batch as the long,
contiguous dimension of every matmul output, which CPU BLAS kernels handle several times faster
than outputs only 8 or 16 wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsegap.config import DataConfig


@dataclass(frozen=True)
class SyntheticData:
    """Train/test split of one synthetic problem.

    Shapes: x (M, B), codes (N, B), dictionary (M, N).
    """

    x_train: Tensor
    x_test: Tensor
    codes_train: Tensor
    codes_test: Tensor
    dictionary: Tensor

    def to(self, device: torch.device) -> SyntheticData:
        return SyntheticData(
            *(
                t.to(device)
                for t in (
                    self.x_train,
                    self.x_test,
                    self.codes_train,
                    self.codes_test,
                    self.dictionary,
                )
            )
        )


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


def make_synthetic(cfg: DataConfig) -> SyntheticData:
    """Generate the dictionary, train and test sets together (as the authors do), then split.

    Deterministic for a given ``cfg.seed`` and independent of global RNG state; generated on the
    CPU so a seed gives the same data on every device.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    dictionary = torch.randn(cfg.M, cfg.N, generator=g)
    dictionary /= dictionary.norm(dim=0, keepdim=True)

    total = cfg.train_samples + cfg.test_samples
    # K distinct positions per sample, uniformly: the K smallest of N i.i.d. uniforms.
    support = torch.rand(total, cfg.N, generator=g).argsort(dim=1)[:, : cfg.K]
    values = sample_magnitudes(cfg.magnitude, (total, cfg.K), g)
    codes = torch.zeros(total, cfg.N).scatter_(1, support, values).T.contiguous()

    x = dictionary @ codes
    if cfg.noise_std > 0:
        x += cfg.noise_std * torch.randn(x.shape, generator=g)

    n = cfg.train_samples
    return SyntheticData(
        x_train=x[:, :n].contiguous(),
        x_test=x[:, n:].contiguous(),
        codes_train=codes[:, :n].contiguous(),
        codes_test=codes[:, n:].contiguous(),
        dictionary=dictionary,
    )
