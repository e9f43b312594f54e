"""Gradient pursuit (Blumensath & Davies 2008, "Gradient Pursuits", IEEE TSP 56(6)).

Selects atoms like OMP (the most correlated with the residual; with ``nonnegative`` the most
positively correlated) but, instead of re-solving least squares on the support Ω, takes one
gradient step with exact line search per iteration: with c = Dᵀ(x - D·S) the negative gradient of
½||x - D·S||², the direction is d = c restricted to Ω and the step a = ||d||² / dᵀG_ΩΩ d, so
s_Ω ← s_Ω + a·d and c ← c - a·G[:, Ω]·d. As in the paper the selection runs over all atoms: an
atom already in Ω may be selected again, which leaves Ω unchanged and just takes another step, so
``min(k, iterations)`` iterations leave at most that many atoms per code.

Non-negative variant: the direction is projected onto the feasible cone (d_i = 0 where s_i = 0 and
c_i < 0) and the step is the line-search minimiser capped where the first coefficient reaches
zero, so every iterate is feasible and the objective never increases.

Runs in Gram form on the machinery of ``matching_pursuit`` (set-up Dᵀx and DᵀD; then one batched
matmul G[:, Ω]·d of 2·L·t FLOPs per sample at iteration t). The L1 weight plays no role (the
budget K is the sparsity control); ``init`` is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.flops import Flops
from sparsegap.inference.base import register_inference
from sparsegap.inference.matching_pursuit import Pursuit, Support, select


@register_inference
class GradientPursuit(Pursuit):
    name = "gp"
    label = "GP"
    needs_budget = True

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        steps = self.steps()
        support = Support(x, atoms)
        tiny = torch.finfo(atoms.dtype).tiny
        corr = support.corr0.clone()
        for _ in range(steps):
            pick, ok = select(corr, self.nonnegative, None, support.floor)
            support.add(pick, ok)
            coef = support.coef
            # Invalid slots (nothing selected, or an atom already in Ω) take no part.
            direction = torch.where(support.valid, corr.gather(-1, support.index), 0.0)
            if self.nonnegative:
                direction = torch.where((coef > 0) | (direction > 0), direction, 0.0)
            applied = support.apply(direction)  # G[:, Ω]·d, (R, B, L)
            curvature = (direction * applied.gather(-1, support.index)).sum(-1, keepdim=True)
            length = (direction * direction).sum(-1, keepdim=True)
            step = torch.where(curvature > tiny, length / curvature.clamp_min(tiny), 0.0)
            if self.nonnegative:
                shrinking = direction < 0
                limit = torch.where(shrinking, coef / (-direction).clamp_min(tiny), float("inf"))
                step = torch.minimum(step, limit.amin(-1, keepdim=True))
                new = (coef + step * direction).clamp_min(0.0)
                new = torch.where(shrinking & (limit <= step), 0.0, new)  # blocked: exactly zero
            else:
                new = coef + step * direction
            support.coef = new
            corr = corr - step * applied
            if self.tolerance > 0 and support.relative_change(coef) < self.tolerance:
                break
        return support.codes()

    def step_flops(self, samples: int, latents: int, dim: int, step: int) -> Flops:
        t = step
        # Selection (argmax, masks), G[:, Ω]·d (matmul), curvature, length, step, the coefficient
        # and correlation updates; the non-negative variant adds the projection and the step cap.
        elementwise = (5 * latents + 12 * t) * samples
        if self.nonnegative:
            elementwise += 6 * t * samples
        return Flops(matmul=2 * latents * t * samples, elementwise=elementwise)
