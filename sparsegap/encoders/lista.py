"""LISTA (Gregor & LeCun 2010): a learned, unrolled ISTA — amortised (a fixed number of
operations per sample) but iterative:

    S_0 = ReLU(W·x [+ b] − θ),    S_{t+1} = ReLU(W·x [+ b] + G·S_t − θ),   t = 0 … T−1,

with learned W (L×M), G (L×L) and θ (L), all shared across the T = ``encoder.layers`` layers.
ReLU is ISTA's non-negative soft threshold. W starts like the SAE's (uniform ±1/√M), G and θ at
zero, so an untrained LISTA is exactly a ReLU SAE; T = 0 is a ReLU SAE with bias −θ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsegap.config import EncoderConfig, ranged
from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


@dataclass
class LISTAConfig(EncoderConfig):
    """LISTA (Gregor & LeCun 2010): S_0 = ReLU(W·x − θ), S_{t+1} = ReLU(W·x + G·S_t − θ)."""

    name: str = "lista"
    # unrolled iterations T after the first layer (0 = a ReLU SAE with bias −θ)
    layers: int = ranged(3, ge=0)


@register_encoder
class LISTA(Encoder):
    name = "lista"
    config = LISTAConfig
    label = "LISTA"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.layers = int(cfg.layers)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)
        self.lateral = nn.Parameter(torch.zeros(self.replicas, self.latents, self.latents))
        self.theta = nn.Parameter(torch.zeros(self.replicas, self.latents, 1))

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        drive = self.linear(x) - self.theta
        codes = drive.relu()
        for _ in range(self.layers):
            codes = torch.baddbmm(drive, self.lateral, codes).relu()
        return codes

    def forward_flops(self, samples: int) -> Flops:
        lb = self.latents * samples
        return (
            linear_forward(self.dim, self.latents, samples, self.cfg.bias)
            + Flops(elementwise=lb)  # − θ
            + relu(self.latents, samples)
            + self.layers
            * (
                linear_forward(self.latents, self.latents, samples, bias=True)
                + Flops(elementwise=lb)
            )
        )

    def backward_flops(self, samples: int) -> Flops:
        lb = self.latents * samples
        # every layer needs G's gradient and the gradient to its input codes
        layer = linear_backward(self.latents, self.latents, samples, input_grad=True, bias=True)
        return (
            linear_backward(self.dim, self.latents, samples, input_grad=False, bias=self.cfg.bias)
            + Flops(elementwise=2 * lb)  # ReLU mask, θ gradient
            + self.layers * (layer + Flops(elementwise=2 * lb))
        )
