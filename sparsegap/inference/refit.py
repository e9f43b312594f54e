"""Support-restricted refit: non-negative least squares on a given support.

An amortised encoder picks *which* latents fire and *how much*; its values are shrunk (an L1
penalty, a bias) even when its support is right. The refit keeps the support Ω of ``init`` (the
encoder's codes, or FISTA's when no ``init`` is given) and solves, per sample,

    min ||D_Ω·s - x||²  over s ≥ 0  (s = 0 off Ω)

exactly, so it removes the shrinkage at the same L0 (never more: NNLS may zero a slot). With
``nonnegative`` false it is plain least squares on Ω. It serves both the pretrained-SAE gap
measurement (``init`` = the SAE's codes) and ``encoder.inference.name=refit`` (the support of
whatever ``init`` the encoder passes, else of FISTA with the configured L1 weight and
iterations).

The solve is Lawson–Hanson warm-started from the initial codes: their positive values are
feasible, so the inner loop (solve on the free set, step back to the boundary, drop the blocking
slot) starts from the whole support, and ``matching_pursuit.nnls`` then re-frees any dropped slot
whose dual is positive. Samples are processed in chunks whose gathered atoms (b, M, T) stay
within ``CHUNK_ELEMENTS``; T is the largest support in the chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference
from sparsegap.inference.ista import FISTA
from sparsegap.inference.matching_pursuit import (
    ZERO_CORRELATION_EPS,
    descend,
    masked_solve,
    nnls,
)

CHUNK_ELEMENTS = 1 << 24  # gathered atoms per chunk: 64 MB in float32


@register_inference
class Refit(Inference):
    name = "refit"
    label = "NNLS refit"

    def __init__(self, cfg, l1_coeff: float) -> None:
        super().__init__(cfg, l1_coeff)
        self.nonnegative = cfg.nonnegative
        # The support size FLOPs are counted for (the data decides the real one): the atom
        # budget k when set, else the mean support of the last call.
        self.support_size: float | None = cfg.k

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        if init is None:
            init = FISTA(self.cfg, self.l1_coeff)(x, atoms)
        replicas, dim, latents = atoms.shape
        samples = x.shape[1]
        out = torch.zeros(replicas, latents, samples, dtype=atoms.dtype, device=atoms.device)
        support = init != 0
        sizes = support.sum(dim=1)  # (R, B)
        self.support_size = float(sizes.double().mean()) if sizes.numel() else 0.0
        widest = int(sizes.max()) if sizes.numel() else 0
        if widest == 0:
            return out
        chunk = max(1, CHUNK_ELEMENTS // (replicas * dim * widest))
        # Atoms as rows (R, L, M), contiguous: gathering rows of it is ~3× faster than gathering
        # through the transposed view.
        rows = atoms.transpose(1, 2).contiguous()
        for start in range(0, samples, chunk):
            part = slice(start, min(start + chunk, samples))
            out[:, :, part] = self._solve(x[:, part], rows, init[:, :, part], support[:, :, part])
        return out

    def _solve(self, x: Tensor, rows: Tensor, init: Tensor, support: Tensor) -> Tensor:
        """The refit of columns x (M, B) on ``support`` (R, L, B), atoms as ``rows`` (R, L, M)."""
        replicas, latents, _ = rows.shape
        width = max(int(support.sum(dim=1).max()), 1)
        # The support's indices first in each column (R, B, T); padding slots are invalid.
        valid, index = support.transpose(1, 2).to(rows.dtype).topk(width, dim=-1, sorted=False)
        valid = valid > 0
        replica = torch.arange(replicas, device=rows.device)[:, None, None]
        chosen = rows[replica, index]  # (R, B, T, M)
        gram = chosen @ chosen.transpose(-1, -2)  # (R, B, T, T)
        # D_Ωᵀx per sample; einsum reduces over M in one pass, unlike B broadcast mat-vec products.
        rhs = torch.einsum("rbtm,bm->rbt", chosen, x.T.to(rows.dtype))  # (R, B, T)
        start = init.transpose(1, 2).gather(-1, index)
        if self.nonnegative:
            floor = ZERO_CORRELATION_EPS * torch.finfo(rows.dtype).eps * x.norm(dim=0)
            start = start.clamp_min(0) * valid
            coef, _ = descend(gram, rhs, valid & (start > 0), start)
            coef = nnls(gram, rhs, valid, coef, floor.to(rows.dtype).expand(replicas, -1))
        else:
            coef = masked_solve(gram, rhs, valid)
        dense = coef.new_zeros(replicas, x.shape[1], latents)
        dense.scatter_add_(-1, index, torch.where(valid, coef, 0.0))
        return dense.transpose(1, 2)

    def flops(self, samples: int, latents: int, dim: int) -> Flops:
        """Per call: the support's Gram matrix and Dᵀx (2·M·T² + 2·M·T per sample) and about
        three T×T solves per sample (Lawson–Hanson's pass count depends on the data), for the
        support size T = ``support_size``; plus FISTA's count when it finds the support."""
        t = round(self.support_size or 0)
        per_sample = Flops(
            matmul=2 * dim * t * t + 2 * dim * t, elementwise=3 * (2 * t**3 // 3 + 4 * t * t)
        )
        return per_sample * samples

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        return self.flops(samples, latents, dim)
