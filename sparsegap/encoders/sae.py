"""Sparse autoencoder encoder: codes = ReLU(W·x [+ b]), one linear-nonlinear layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsegap.accel.reconstruction import reconstruction_backward, relu_backward
from sparsegap.config import EncoderConfig, HandStepConfig
from sparsegap.encoders.base import Encoder, FusedStep, HandStep, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu

if TYPE_CHECKING:
    from sparsegap.decoder import Decoder
    from sparsegap.optim import Adam


@dataclass
class SAEConfig(EncoderConfig, HandStepConfig):
    """Sparse autoencoder: codes = ReLU(W·x [+ b])."""

    name: str = "sae"


@register_encoder
class SAE(Encoder):
    name = "sae"
    config = SAEConfig
    label = "SAE"
    has_fast_step = True
    capturable = True

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.linear(x).relu()

    @torch.no_grad()
    def fast_step(
        self,
        x: Tensor,
        atoms: Tensor,
        l1_coeff: float | Tensor,
        atoms_grad: bool,
        losses: bool = True,
    ) -> HandStep:
        codes = self.linear(x).relu_()
        mse, l1, grad, grad_atoms = reconstruction_backward(
            codes, atoms, x, l1_coeff, atoms_grad, losses
        )
        self.linear.backward_(x, relu_backward(grad, codes))
        return mse, l1, codes, grad_atoms

    def fused_step(self, decoder: Decoder, optimiser: Adam, low: torch.dtype) -> FusedStep | None:
        """``accel.fused.SAETrainer`` on a CUDA GPU (Ampere or later: Triton's bf16 GEMMs) with
        Triton importable, for the SAE's own forward and step without encoder bias (SAE+ITO
        trains alike; a subclass that changes either trains differently)."""
        own = type(self).forward is SAE.forward and type(self).fast_step is SAE.fast_step
        device = self.linear.weight.device
        if not own or self.linear.bias is not None or device.type != "cuda":
            return None
        if torch.cuda.get_device_capability(device) < (8, 0):
            return None
        try:
            from sparsegap.accel.fused import SAETrainer
        except ImportError:  # a torch build without Triton
            return None
        return SAETrainer(self.linear.weight, decoder, optimiser, low)

    def forward_flops(self, samples: int) -> Flops:
        return linear_forward(self.dim, self.latents, samples, self.cfg.bias) + relu(
            self.latents, samples
        )

    def backward_flops(self, samples: int) -> Flops:
        return linear_backward(
            self.dim, self.latents, samples, input_grad=False, bias=self.cfg.bias
        ) + relu(self.latents, samples)
