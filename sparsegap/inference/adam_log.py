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
from sparsegap.optim import Adam


@register_inference
class AdamLog(Inference):
    name = "adam_log"

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        if init is None:
            log_codes = torch.full((replicas, latents, samples), self.cfg.init_log, device=x.device)
        else:
            log_codes = init.clamp_min(math.exp(self.cfg.init_log)).log()
        # Gradient of the objective w.r.t. S, with the Gram form of Dᵀ(DS - X) = (DᵀD)S - DᵀX:
        #   c·(DᵀD)S - c·DᵀX + l1/(L·B),  c = 2/(M·B).
        # DᵀD and DᵀX are computed once, leaving one batched matmul per iteration.
        scale = 2.0 / (dim * samples)
        atoms_t = atoms.transpose(1, 2)
        gram = torch.bmm(atoms_t, atoms).mul_(scale)
        offset = torch.matmul(atoms_t, x).mul_(-scale).add_(self.l1_coeff / (latents * samples))

        codes = torch.empty_like(log_codes)
        log_codes.grad = torch.empty_like(log_codes)
        optimiser = Adam([log_codes], lr=self.cfg.lr)
        for _ in range(self.iterations):
            torch.exp(log_codes, out=codes)
            # Chain rule through S = exp(log S): d/dlogS = S ⊙ dL/dS (and |S| = S since S > 0).
            torch.baddbmm(offset, gram, codes, out=log_codes.grad).mul_(codes)
            optimiser.step()
        log_codes.grad = None
        return log_codes.exp_()

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """DᵀD and DᵀX, once per call."""
        return Flops(
            matmul=2 * dim * latents * (latents + samples), elementwise=2 * latents * samples
        )

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        # Gram matmul, exp, offset add, chain-rule product and the Adam update (12 per code).
        return Flops(matmul=2 * latents * latents * samples, elementwise=15 * latents * samples)
