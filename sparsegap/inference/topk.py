"""Top-k sparse coding (paper App. F.2): normalised iterative hard thresholding onto k-sparse codes.

The paper's sparse coding leaves every latent slightly active (codes are exp(log S) > 0, so
L0 = 1.0 in its Fig. 15) and App. F.2 proposes applying a top-k operation *directly* to the codes
instead of to exponentiated ones. This is that: normalised iterative hard thresholding (NIHT,
Blumensath & Davies 2010), non-negative by default, on adam_log's objective

    F(S) = ||D·S - X||²/(M·B) + l1·mean(S)   (per column, the lasso ½||D·s - x||² + λ'·Σs
                                               with λ' = l1·M/(2L)),

a gradient step on the smooth part, a soft threshold for the L1 part, then keeping the k largest
entries of each code column (H_k):

    g = Dᵀ(D·s - x),  s ← H_k(max(0, s - μ·g - μ·λ')),

(``nonnegative: false``: soft-threshold by magnitude, keep the k largest |entries|). The step μ is
chosen per column as NIHT's ||g_Γ||² / ||D·g_Γ||² on the current support Γ, halved (backtracking)
while the support changes and μ exceeds 0.99·||Δs||² / ||D·Δs||² — which is what keeps NIHT
stable where plain IHT with μ = 1/||D||₂² stalls: on the tests' small problems NIHT recovers
65–90 % of exactly sparse codes, plain IHT 45–60 %, NN-OMP 80–95 %. With l1 = 0 it is plain NIHT.
The budget is ``encoder.inference.k`` (default ``data.K``): codes have at most k non-zeros per
sample whatever the L1 weight; the L1 term only shrinks them.

Unlike the greedy pursuits (``mp``, ``omp``) an atom can leave the support again, and ``init``
warm-starts (e.g. from an SAE's codes, projected to k entries). No k-sparse method is guaranteed
to find the best support (the problem is NP-hard); tests/test_inference_topk.py compares this one
with an exhaustive search on small problems.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.config import InferenceConfig
from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference

# NIHT's backtracking (Blumensath & Davies 2010): shrink μ by κ(1 - c) while too long.
BACKTRACK_C = 0.01
BACKTRACK_KAPPA = 2.0
MAX_BACKTRACKS = 10


@register_inference
class TopK(Inference):
    name = "topk"
    label = "top-k (IHT)"
    needs_budget = True

    def __init__(self, cfg: InferenceConfig, l1_coeff: float) -> None:
        super().__init__(cfg, l1_coeff)
        self.k: int | None = cfg.k
        self.nonnegative = cfg.nonnegative

    def budget(self, latents: int) -> int:
        """Non-zeros kept per code column: ``k``, at most the number of latents."""
        if self.k is None:
            raise ValueError(
                "inference 'topk' needs a budget but encoder.inference.k is null;"
                " set encoder.inference.k (e.g. to data.K)"
            )
        if self.k < 1:
            raise ValueError(f"encoder.inference.k={self.k} is invalid: must be at least 1")
        return min(self.k, latents)

    def project(self, z: Tensor, k: int) -> Tensor:
        """H_k: keep the k largest entries of each column (by magnitude when signed)."""
        if k == z.shape[1]:
            return z
        index = (z if self.nonnegative else z.abs()).topk(k, dim=1).indices
        return torch.zeros_like(z).scatter_(1, index, z.gather(1, index))

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        k = self.budget(latents)
        if init is None:
            codes = torch.zeros(replicas, latents, samples, dtype=atoms.dtype, device=atoms.device)
        else:
            init = init.to(atoms.dtype)
            codes = self.project(init.clamp_min(0) if self.nonnegative else init, k)
        atoms_t = atoms.transpose(1, 2).contiguous()
        shrink = self.l1_coeff * dim / (2 * latents)  # λ' of the per-column lasso
        tiny = torch.finfo(atoms.dtype).tiny
        for _ in range(self.iterations):
            grad = torch.matmul(atoms_t, torch.matmul(atoms, codes).sub_(x))
            support = codes != 0
            # An empty column starts from the k atoms its gradient would raise most.
            start = (-grad if self.nonnegative else grad.abs()).topk(k, dim=1).indices
            start = torch.zeros_like(support).scatter_(1, start, True)
            support = torch.where(support.any(dim=1, keepdim=True), support, start)
            restricted = grad * support
            step = _ratio(restricted, torch.matmul(atoms, restricted), tiny)
            for _ in range(MAX_BACKTRACKS):
                new = self.project(self._threshold(codes - step * grad, step * shrink), k)
                change = new - codes
                moved = ((new != 0) != (codes != 0)).any(dim=1, keepdim=True)
                limit = (1 - BACKTRACK_C) * _ratio(change, torch.matmul(atoms, change), tiny)
                too_long = moved & (step > limit)
                if not too_long.any():
                    break
                step = torch.where(too_long, step / (BACKTRACK_KAPPA * (1 - BACKTRACK_C)), step)
            codes = new
        return codes

    def _threshold(self, z: Tensor, theta: Tensor) -> Tensor:
        if self.nonnegative:
            return z.sub_(theta).clamp_min_(0)
        return z.sign() * (z.abs() - theta).clamp_min_(0)

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """One iteration as typically run: five matmuls (D·s, Dᵀ·r, D·g_Γ, and D·Δs for two
        step-size tries — the measured count on the tests' problems; each further backtracking
        try adds one); residual, support, step ratios, threshold, top-k selection (about one
        comparison per entry) and scatter, per try."""
        per_try = dim * samples + (6 if self.nonnegative else 9) * latents * samples
        elementwise = 2 * dim * samples + 6 * latents * samples + 2 * per_try
        return Flops(matmul=10 * dim * latents * samples, elementwise=elementwise)

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        return Flops()


def _ratio(v: Tensor, dv: Tensor, tiny: float) -> Tensor:
    """Per column ||v||² / ||D·v||², shaped (R, 1, B): the exact line-search step along v."""
    return v.square().sum(dim=1, keepdim=True) / dv.square().sum(dim=1, keepdim=True).clamp_min(
        tiny
    )
