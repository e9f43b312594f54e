"""The encoder interface and registry.

An encoder maps a column batch X (M, B) to non-negative codes (R, L, B) for its R replicas (the
losses rely on codes ≥ 0: their L1 term is the plain mean). Subclasses declare
their parameters, their training-time forward, optionally a different test-time ``infer``, and
the FLOPs of each next to them. Nothing else: losses live in scenarios, the loop in train.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparsegap.config import EncoderConfig
from sparsegap.flops import Flops

ENCODERS: dict[str, type[Encoder]] = {}


class Encoder(nn.Module):
    name: ClassVar[str]

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        dim: int,
        latents: int,
        generators: Sequence[torch.Generator],
        train_samples: int,
        l1_coeff: float,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim, self.latents, self.replicas = dim, latents, len(generators)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training-time codes (R, L, B) for x (M, B); ``index`` selects training samples for
        encoders that store per-sample state (sparse coding)."""
        raise NotImplementedError

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        """Codes for unseen samples given the current dictionary (R, M, L). Amortised encoders
        simply run their forward pass."""
        return self.forward(x)

    def needs_training(self, decoder_learned: bool) -> bool:
        """Whether training steps do anything useful for the test-time codes."""
        return True

    def forward_flops(self, samples: int) -> Flops:
        raise NotImplementedError

    def backward_flops(self, samples: int) -> Flops:
        raise NotImplementedError

    def infer_flops(self, samples: int) -> Flops:
        return self.forward_flops(samples)

    def parameters_per_replica(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) // self.replicas


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    ENCODERS[cls.name] = cls
    return cls
