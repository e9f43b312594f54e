"""MLP encoder: codes = ReLU(W2·ReLU(W1·x [+ b1]) [+ b2]), hidden width ``encoder.hidden``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsegap.accel.native.mlp_step import NativeMLPStep
from sparsegap.accel.reconstruction import reconstruction_backward, relu_backward
from sparsegap.config import EncoderConfig, HandStepConfig, ranged
from sparsegap.encoders.base import Encoder, HandStep, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


@dataclass
class MLPConfig(EncoderConfig, HandStepConfig):
    """One-hidden-layer MLP encoder: codes = ReLU(W2·ReLU(W1·x [+ b1]) [+ b2])."""

    name: str = "mlp"
    hidden: int = ranged(32, ge=1)  # hidden width (paper: 32, 256; 1,024 for known codes)
    # With fast_step on the CPU (float32, sample count and hidden width multiples of 8, at most
    # 64 latents): the whole step as one fused C++ kernel (sparsegap/accel/native), compiled
    # with $CXX (g++) on first use and cached; where it cannot be built the torch step runs and
    # one line on stderr says why. false = the torch step.
    native: bool = True


@register_encoder
class MLP(Encoder):
    name = "mlp"
    config = MLPConfig
    label = "MLP"

    @classmethod
    def describe(cls, encoder: Mapping[str, Any]) -> str:
        return f"MLP (hidden {encoder['hidden']})"

    has_fast_step = True
    capturable = True

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        gens = kw["generators"]
        self.hidden = ReplicaLinear(self.dim, cfg.hidden, gens, bias=cfg.bias)
        self.out = ReplicaLinear(cfg.hidden, self.latents, gens, bias=cfg.bias)
        self.native = NativeMLPStep() if cfg.native else None

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.out(self.hidden(x).relu()).relu()

    @torch.no_grad()
    def fast_step(
        self,
        x: Tensor,
        atoms: Tensor,
        l1_coeff: float | Tensor,
        atoms_grad: bool,
        losses: bool = True,
    ) -> HandStep:
        if self.native is not None and self.native.applies(x, self.hidden.weight, atoms):
            mse, l1, codes, grad_atoms = self.native(
                x, self.hidden, self.out, atoms, l1_coeff, atoms_grad
            )
            return (mse, l1, codes, grad_atoms) if losses else (None, None, codes, grad_atoms)
        hidden = self.hidden(x).relu_()
        codes = self.out(hidden).relu_()
        mse, l1, grad, grad_atoms = reconstruction_backward(
            codes, atoms, x, l1_coeff, atoms_grad, losses
        )
        grad_hidden = self.out.backward_(hidden, relu_backward(grad, codes), input_grad=True)
        assert grad_hidden is not None
        self.hidden.backward_(x, relu_backward(grad_hidden, hidden))
        return mse, l1, codes, grad_atoms

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
