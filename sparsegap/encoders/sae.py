"""Sparse autoencoder encoder: codes = ReLU(W·x [+ b]), one linear-nonlinear layer."""

from __future__ import annotations

import torch
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

    @torch.no_grad()
    def fast_step(
        self, x: Tensor, decoder: Tensor, l1_coeff: float | Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and hand-written backward of mse + l1_coeff·mean(codes) with the decoder
        (R, M, L) (``encoder.fast_step``): five GEMMs in ``dtype`` (bf16 copies of the fp32
        weights under ``device.autocast=bf16``), the ReLU mask read from the codes, the MSE
        scale folded into the small residual, and no autograd graph. Sets the weights' and the
        decoder's ``.grad`` (fp32) and returns per-replica (mse, mean(codes), codes); the
        gradients equal autograd's (tests/test_lm_fast_step.py)."""
        replicas, latents, dim = self.linear.weight.shape
        samples = x.shape[1]
        x_low, atoms = x.to(dtype), decoder.detach().to(dtype)
        weight = self.linear.weight.detach().to(dtype)
        codes = (weight.reshape(replicas * latents, dim) @ x_low).view(replicas, latents, samples)
        if self.linear.bias is not None:
            codes += self.linear.bias.detach().to(dtype)
        codes.relu_()
        residual = torch.baddbmm(x_low.expand(replicas, dim, samples), atoms, codes, beta=-1)
        mse = residual.float().square().mean(dim=(1, 2))
        l1 = codes.float().mean(dim=(1, 2))
        residual.mul_(2.0 / (dim * samples))
        grad_codes = torch.bmm(atoms.transpose(1, 2), residual).add_(l1_coeff / (latents * samples))
        grad_pre = torch.ops.aten.threshold_backward(grad_codes, codes, 0)
        decoder.grad = torch.bmm(residual, codes.transpose(1, 2)).to(decoder.dtype)
        self.linear.weight.grad = (grad_pre @ x_low.T).to(self.linear.weight.dtype)
        if self.linear.bias is not None:
            self.linear.bias.grad = grad_pre.sum(dim=2, keepdim=True).to(self.linear.bias.dtype)
        return mse, l1, codes

    def forward_flops(self, samples: int) -> Flops:
        return linear_forward(self.dim, self.latents, samples, self.cfg.bias) + relu(
            self.latents, samples
        )

    def backward_flops(self, samples: int) -> Flops:
        return linear_backward(
            self.dim, self.latents, samples, input_grad=False, bias=self.cfg.bias
        ) + relu(self.latents, samples)
