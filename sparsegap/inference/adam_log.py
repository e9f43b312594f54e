"""The paper's inference: Adam on log-parametrised codes (S = exp(log S)), from log S = -10.

The gradient is written out by hand instead of using autograd: the objective is a two-matmul
expression and this loop runs ten thousand times per evaluation, so the autograd graph would cost
more than the arithmetic. tests/test_inference.py checks it against autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@register_inference
class AdamLog(Inference):
    name = "adam_log"

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        floor = math.exp(self.cfg.init_log)
        if init is None:
            log_codes = torch.full((replicas, latents, samples), self.cfg.init_log, device=x.device)
        else:
            log_codes = init.clamp_min(floor).log()
        atoms_t = atoms.transpose(1, 2).contiguous()
        grad_scale = 2.0 / (dim * samples)
        l1_grad = self.l1_coeff / (latents * samples)

        codes = torch.empty_like(log_codes)
        grad = torch.empty_like(log_codes)
        residual = torch.empty(replicas, dim, samples, device=x.device)
        m = torch.zeros_like(log_codes)
        v = torch.zeros_like(log_codes)
        denom = torch.empty_like(log_codes)
        for t in range(1, self.iterations + 1):
            torch.exp(log_codes, out=codes)
            torch.matmul(atoms, codes, out=residual).sub_(x)
            # d/dlogS = S ⊙ (2/(M·B) Dᵀ(DS - X) + l1/(L·B)); |S| = S since S > 0.
            torch.matmul(atoms_t, residual, out=grad).mul_(grad_scale).add_(l1_grad).mul_(codes)
            m.lerp_(grad, 1 - BETA1)
            v.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
            torch.sqrt(v, out=denom).div_(math.sqrt(1 - BETA2**t)).add_(EPS)
            log_codes.addcdiv_(m, denom, value=-self.cfg.lr / (1 - BETA1**t))
        return log_codes.exp_()

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        # Two matmuls (decode, gradient) + exp, residual, gradient scaling and the Adam update.
        return Flops(matmul=4 * dim * latents * samples, elementwise=(dim + 16 * latents) * samples)
