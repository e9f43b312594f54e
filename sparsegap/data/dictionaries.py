"""Ground-truth dictionaries (M, N), unit-norm columns: Gaussian, orthogonal, and coherent.

``coherent`` mixes one shared random unit direction c into Gaussian unit atoms,
a_j(t) ∝ (1 − t)·g_j + t·c, and finds t ∈ [0, 1] by bisection so that the mean or max off-diagonal
|cosine| between atoms hits ``data.coherence_target``. At t = 0 this is the Gaussian dictionary, at
t = 1 every atom is c (coherence 1); the Gram matrix at any t follows from the Gaussian Gram matrix
and the projections g_j·c, so each bisection step costs O(N²), not O(M·N²).
"""

from __future__ import annotations

import torch
from torch import Tensor

BISECTION_STEPS = 50


def coherence(dictionary: Tensor) -> dict[str, float]:
    """Mean and max off-diagonal |cosine| between the atoms (columns) of a dictionary."""
    d = dictionary.double()
    d = d / d.norm(dim=0, keepdim=True)
    return _gram_coherence(d.T @ d)


def _gram_coherence(gram: Tensor) -> dict[str, float]:
    n = gram.shape[0]
    if n < 2:
        return {"mean": 0.0, "max": 0.0}
    off = gram.abs().masked_fill(torch.eye(n, dtype=torch.bool), 0.0)
    return {"mean": (off.sum() / (n * (n - 1))).item(), "max": off.max().item()}


def gaussian_atoms(m: int, n: int, generator: torch.Generator) -> Tensor:
    """The paper's dictionary: i.i.d. N(0, 1) entries, columns normalised (the first draw of the
    data generator, so the default data is unchanged)."""
    d = torch.randn(m, n, generator=generator)
    return d / d.norm(dim=0, keepdim=True)


def orthogonal_atoms(m: int, n: int, generator: torch.Generator) -> Tensor:
    """Orthonormal columns (needs N ≤ M): Q of the QR decomposition of a Gaussian matrix, signs
    fixed so that diag(R) > 0 (Haar distributed)."""
    if n > m:
        raise ValueError(f"an orthogonal dictionary needs N <= M, got N={n}, M={m}")
    q, r = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).float().contiguous()


def _mixed_gram(gram: Tensor, proj: Tensor, t: float) -> Tensor:
    """Gram matrix of normalised (1 − t)·g_j + t·c given G = gᵀg (unit g) and proj_j = g_j·c."""
    a, b = 1.0 - t, t
    norms = (a * a + 2 * a * b * proj + b * b).clamp_min(1e-300).sqrt()
    inner = a * a * gram + a * b * (proj[:, None] + proj[None, :]) + b * b
    return inner / (norms[:, None] * norms[None, :])


def coherent_atoms(
    m: int, n: int, target: float, kind: str, generator: torch.Generator
) -> tuple[Tensor, float]:
    """Gaussian atoms mixed with a shared direction to reach ``target`` mean|max |cosine|.

    Returns the dictionary and the mixing weight t. Raises ValueError when the Gaussian atoms are
    already more coherent than the target (``validate`` checks this first, see ``gaussian_floor``).
    """
    g = gaussian_atoms(m, n, generator).double()
    c = torch.randn(m, generator=generator, dtype=torch.float64)
    c /= c.norm()
    gram, proj = g.T @ g, g.T @ c
    floor = _gram_coherence(gram)[kind]
    if target < floor:
        raise ValueError(f"Gaussian atoms already have {kind} |cosine| {floor:.4f} > {target}")
    lo, hi = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _gram_coherence(_mixed_gram(gram, proj, mid))[kind] < target:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    d = (1.0 - t) * g + t * c[:, None]
    return (d / d.norm(dim=0, keepdim=True)).float().contiguous(), t


def gaussian_floor(m: int, n: int, seed: int, kind: str) -> float:
    """Coherence of the Gaussian atoms a ``dictionary=coherent`` run with this seed starts from:
    the lowest target it can reach."""
    return coherence(gaussian_atoms(m, n, torch.Generator().manual_seed(seed)))[kind]


def make_dictionary(cfg, generator: torch.Generator) -> Tensor:
    """The (M, N) dictionary named by ``cfg.dictionary``; consumes ``generator`` first."""
    kind = getattr(cfg, "dictionary", "gaussian")
    if kind == "gaussian":
        return gaussian_atoms(cfg.M, cfg.N, generator)
    if kind == "orthogonal":
        return orthogonal_atoms(cfg.M, cfg.N, generator)
    if kind == "coherent":
        return coherent_atoms(cfg.M, cfg.N, cfg.coherence_target, cfg.coherence_kind, generator)[0]
    raise ValueError(f"unknown dictionary {kind!r}")
