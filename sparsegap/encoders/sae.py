"""Sparse autoencoder encoder: codes = ReLU(W·x [+ b]), one linear-nonlinear layer."""

from __future__ import annotations

from torch import Tensor

from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


@register_encoder
class SAE(Encoder):
    name = "sae"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.linear(x).relu()

    def forward_flops(self, samples: int) -> Flops:
        return linear_forward(self.dim, self.latents, samples, self.cfg.bias) + relu(
            self.latents, samples
        )

    def backward_flops(self, samples: int) -> Flops:
        return linear_backward(
            self.dim, self.latents, samples, input_grad=False, bias=self.cfg.bias
        ) + relu(self.latents, samples)
