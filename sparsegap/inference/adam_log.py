"""The paper's inference: Adam on log-parametrised codes (S = exp(log S)), from log S = -10.

The gradient is written out by hand instead of using autograd: the objective is a two-matmul
expression and this loop runs ten thousand times per evaluation, so the autograd graph would cost
more than the arithmetic. tests/test_inference_adam_log.py checks it against autograd.
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
    label = "Adam"

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        if init is None:
            shape = (replicas, latents, samples)
            log_codes = torch.full(shape, self.cfg.init_log, dtype=x.dtype, device=x.device)
        else:
            log_codes = init.to(x.dtype).clamp_min(math.exp(self.cfg.init_log)).log()
        # dL/dS = c·Dᵀ(DS - X) + l1/(L·B) with c = 2/(M·B). When L ≤ 2M the Gram form
        # c·(DᵀD)S - c·DᵀX is cheaper: DᵀD and DᵀX are computed once, leaving one batched
        # matmul per iteration instead of two.
        scale = 2.0 / (dim * samples)
        l1_grad = self.l1_coeff / (latents * samples)
        atoms_t = atoms.transpose(1, 2)
        gram = _use_gram(latents, dim)
        if gram:
            gram_matrix = torch.bmm(atoms_t, atoms).mul_(scale)
            offset = torch.matmul(atoms_t, x).mul_(-scale).add_(l1_grad)
        else:
            residual = torch.empty(replicas, dim, samples, dtype=x.dtype, device=x.device)
            atoms_t = atoms_t.mul(scale)

        codes = torch.empty_like(log_codes)
        log_codes.grad = torch.empty_like(log_codes)
        optimiser = Adam([log_codes], lr=self.cfg.lr)
        grad = log_codes.grad

        def iteration() -> None:  # in place only: it may be captured as a CUDA graph
            torch.exp(log_codes, out=codes)
            if gram:
                torch.baddbmm(offset, gram_matrix, codes, out=grad)
            else:
                torch.matmul(atoms, codes, out=residual).sub_(x)
                torch.matmul(atoms_t, residual, out=grad).add_(l1_grad)
            # Chain rule through S = exp(log S): d/dlogS = S ⊙ dL/dS (and |S| = S since S > 0).
            grad.mul_(codes)
            optimiser.step()

        self.iterate(iteration, x.device)
        log_codes.grad = None
        return log_codes.exp_()

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """DᵀD and DᵀX once per call (Gram form only)."""
        if not _use_gram(latents, dim):
            return Flops(elementwise=dim * latents)
        return Flops(
            matmul=2 * dim * latents * (latents + samples), elementwise=2 * latents * samples
        )

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        # exp, gradient matmul(s), chain-rule product and the Adam update (12 per code).
        if _use_gram(latents, dim):
            return Flops(matmul=2 * latents * latents * samples, elementwise=15 * latents * samples)
        return Flops(matmul=4 * dim * latents * samples, elementwise=(dim + 15 * latents) * samples)


def _use_gram(latents: int, dim: int) -> bool:
    return latents <= 2 * dim
