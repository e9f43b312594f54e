"""MLP encoder: codes = ReLU(W2·ReLU(W1·x [+ b1]) [+ b2]), hidden width ``encoder.hidden``."""

from __future__ import annotations

from torch import Tensor

from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


@register_encoder
class MLP(Encoder):
    name = "mlp"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        gens = kw["generators"]
        self.hidden = ReplicaLinear(self.dim, cfg.hidden, gens, bias=cfg.bias)
        self.out = ReplicaLinear(cfg.hidden, self.latents, gens, bias=cfg.bias)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.out(self.hidden(x).relu()).relu()

    def forward_flops(self, samples: int) -> Flops:
        h, b = self.cfg.hidden, self.cfg.bias
        return (
            linear_forward(self.dim, h, samples, b)
            + relu(h, samples)
            + linear_forward(h, self.latents, samples, b)
            + relu(self.latents, samples)
        )

    def backward_flops(self, samples: int) -> Flops:
        h, b = self.cfg.hidden, self.cfg.bias
        return (
            linear_backward(self.dim, h, samples, input_grad=False, bias=b)
            + relu(h, samples)
            + linear_backward(h, self.latents, samples, input_grad=True, bias=b)
            + relu(self.latents, samples)
        )
