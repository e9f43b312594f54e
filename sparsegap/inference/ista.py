"""ISTA and FISTA (Beck & Teboulle 2009): proximal gradient descent on the L1-penalised objective.

The objective is adam_log's, per replica: F(S) = ||D·S - X||²/(M·B) + l1·mean(S) over S ≥ 0
(l1·mean|S| when ``nonnegative`` is false). Multiplied by M·B/2 it is the lasso
½||D·S - X||² + λ'·ΣS with λ' = l1·M/(2L), whose smooth part has gradient Dᵀ(D·S - X) and
Lipschitz constant ||D||₂² (the largest singular value of the replica's dictionary, squared).
With step 1/||D||₂² one iteration is therefore

    Z = S - Dᵀ(D·S - X) / ||D||₂²,    S ← max(0, Z - θ),    θ = l1·M / (2·L·||D||₂²),

(the signed variant soft-thresholds: sign(Z)·max(0, |Z| - θ)). θ does not depend on B.

Columns (samples) and replicas are independent problems sharing one step size, so FISTA keeps one
momentum sequence per column, and the adaptive restart of O'Donoghue & Candès (2015, gradient
scheme) resets a column's momentum when its last step went uphill: (Y - S_new)·(S_new - S) > 0.

The first iteration is like every other: the set-up (one SVD per replica for ||D||₂) involves no
matmul and is counted as elementwise work in ``flops``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.config import InferenceConfig
from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference


@register_inference
class ISTA(Inference):
    name = "ista"
    label = "ISTA"
    momentum = False

    def __init__(self, cfg: InferenceConfig, l1_coeff: float) -> None:
        super().__init__(cfg, l1_coeff)
        self.nonnegative = cfg.nonnegative
        self.restart = cfg.restart
        self.tolerance = cfg.tolerance

    def threshold(self, atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1/||D||₂² and per-element threshold θ for each replica, both shaped (R, 1, 1)."""
        replicas, dim, latents = atoms.shape
        # A tiny SVD per replica, done on the CPU in float64 (svd is not on every backend, e.g.
        # MPS): the same step on every device, at the cost of one small transfer per call.
        norm = torch.linalg.matrix_norm(atoms.detach().cpu().double(), ord=2)
        lipschitz = norm.square().to(device=atoms.device, dtype=atoms.dtype)
        step = lipschitz.clamp_min(torch.finfo(atoms.dtype).tiny).reciprocal().view(replicas, 1, 1)
        return step, step * (self.l1_coeff * dim / (2 * latents))

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        if init is None:
            codes = torch.zeros(replicas, latents, samples, dtype=atoms.dtype, device=atoms.device)
        else:
            codes = init.clamp_min(0) if self.nonnegative else init.clone()
        if self.iterations == 0:
            return codes
        step, theta = self.threshold(atoms)
        atoms_t = atoms.transpose(1, 2).contiguous()

        point = codes  # where the gradient is taken: the codes (ISTA) or the extrapolation (FISTA)
        t = torch.ones(replicas, 1, samples, dtype=atoms.dtype, device=atoms.device)
        residual = torch.empty(replicas, dim, samples, dtype=atoms.dtype, device=atoms.device)
        grad = torch.empty_like(codes)
        for _ in range(self.iterations):
            torch.matmul(atoms, point, out=residual).sub_(x)
            torch.matmul(atoms_t, residual, out=grad)
            new = torch.addcmul(point, grad, step, value=-1.0)
            if self.nonnegative:
                new.sub_(theta).clamp_min_(0)
            else:
                new = new.sign() * (new.abs() - theta).clamp_min_(0)
            if self.momentum:
                diff = new - codes
                t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
                beta = (t - 1) / t_next
                if self.restart:
                    uphill = ((point - new) * diff).sum(dim=1, keepdim=True) > 0
                    beta = beta.masked_fill(uphill, 0.0)
                    t_next = t_next.masked_fill(uphill, 1.0)
                point = torch.addcmul(new, diff, beta)
                t = t_next
            else:
                point = new
            done = self.tolerance > 0 and _relative_change(new, codes) < self.tolerance
            codes = new
            if done:
                break
        return codes

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        # Decode and gradient (two matmuls); residual, step, threshold (signed: also |·|, sign, ·).
        elementwise = dim * samples + (4 if self.nonnegative else 7) * latents * samples
        if self.momentum:
            # difference, extrapolation, t update; restart test: difference, product, sum.
            elementwise += 3 * latents * samples + 6 * samples
            if self.restart:
                elementwise += 3 * latents * samples + samples
        if self.tolerance > 0:
            elementwise += 5 * latents * samples
        return Flops(matmul=4 * dim * latents * samples, elementwise=elementwise)

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """One SVD per replica for the step size: ~4·M·L·min(M, L), no matmul."""
        return Flops(elementwise=4 * dim * latents * min(dim, latents) if self.iterations else 0)

    def flops(self, samples: int, latents: int, dim: int) -> Flops:
        setup = self.setup_flops(samples, latents, dim)
        return setup + self.iteration_flops(samples, latents, dim) * self.iterations


@register_inference
class FISTA(ISTA):
    name = "fista"
    label = "FISTA"
    momentum = True


def _relative_change(new: Tensor, old: Tensor) -> float:
    """max over replicas of ||new - old||_F / ||new||_F (0 when both are zero)."""
    change = (new - old).flatten(1).norm(dim=1)
    scale = new.flatten(1).norm(dim=1)
    ratio = torch.where(change > 0, change / scale.clamp_min(torch.finfo(new.dtype).tiny), 0.0)
    return float(ratio.max()) if ratio.numel() else 0.0
