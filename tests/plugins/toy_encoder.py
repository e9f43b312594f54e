"""A new encoder from one file outside the package, as a user would add one: its config (with a
field of its own), its check, the scenarios it applies to, its label and its FLOPs. Loaded with
``SPARSEGAP_PLUGINS=toy_encoder`` (tests/test_declarations.py); touches no package file."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import ConfigError, EncoderConfig
from sparsegap.encoders import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


@dataclass
class ToyConfig(EncoderConfig):
    """A scaled ReLU SAE: codes = ReLU(gain · W·x)."""

    name: str = "toy"
    gain: float = 2.0  # factor on the pre-activations; (0, inf)


@register_encoder
class Toy(Encoder):
    name = "toy"
    config = ToyConfig
    label = "Toy SAE"
    scenarios = ("known_dictionary", "unknown")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        if not cfg.encoder.gain > 0:
            raise ConfigError(f"encoder.gain={cfg.encoder.gain} is invalid: must be positive")

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)
        self.gain = float(cfg.gain)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return torch.relu(self.linear(x) * self.gain)

    def forward_flops(self, samples: int) -> Flops:
        scale = Flops(elementwise=self.latents * samples)
        return (
            linear_forward(self.dim, self.latents, samples, self.cfg.bias)
            + scale
            + relu(self.latents, samples)
        )

    def backward_flops(self, samples: int) -> Flops:
        backward = linear_backward(self.dim, self.latents, samples, input_grad=False)
        return backward + Flops(elementwise=2 * self.latents * samples)
