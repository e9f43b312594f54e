"""Matching pursuit (MP) and orthogonal matching pursuit (OMP) with a K-atom budget.

Both are greedy: each iteration selects the atom most correlated with the residual (with
``nonnegative``, the most *positively* correlated one, and a sample whose correlations are all
≤ 0 selects nothing), so ``min(k, iterations)`` iterations leave at most that many atoms per code.

* MP (Mallat & Zhang 1993) adds the selected atom's correlation to its coefficient (atoms may be
  selected again); its codes are non-negative when ``nonnegative`` is set.
* OMP (Pati et al. 1993) re-fits every coefficient on the support by least squares, so atoms are
  never selected twice; with ``nonnegative`` the fit is non-negative least squares on the support
  (NN-OMP, Bruckstein et al. 2008), solved exactly by a batched Lawson–Hanson active-set method
  warm-started from the previous iteration's solution.

Everything runs in Gram form, batched over replicas and samples: the set-up computes Dᵀx and
G = DᵀD once (the only matmuls of the first iteration); afterwards MP updates the correlations
with one gathered column of G per sample (no matmul), and OMP recomputes them from the previous
support, c = Dᵀx - G[:, Ω]·s_Ω, a batched matmul of 2·L·|Ω| FLOPs per sample that grows with the
support (gradient pursuit shares the ``Support`` machinery). ``flops`` sums the exact per-iteration
counts; ``iteration_flops`` is the most expensive (last) iteration at the full budget.

The L1 weight plays no role here (the budget K is the sparsity control); ``init`` is ignored.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from sparsegap.config import InferenceConfig
from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference

# A correlation counts as zero below this many machine epsilons times ||x||: after an exact fit the
# residual's correlations are rounding noise (~ε·cond·||x||), which must not select atoms.
ZERO_CORRELATION_EPS = 1e3
# Ridge added to the support's Gram matrix (in machine epsilons times its largest diagonal entry)
# so that dependent atoms (support larger than M, duplicated atoms) still give a solvable system.
RIDGE_EPS = 10.0


class Pursuit(Inference):
    """Shared configuration, budget and FLOP bookkeeping of the greedy pursuits."""

    def __init__(self, cfg: InferenceConfig, l1_coeff: float) -> None:
        super().__init__(cfg, l1_coeff)
        self.k: int | None = cfg.k
        self.nonnegative = cfg.nonnegative
        self.tolerance = cfg.tolerance

    def steps(self) -> int:
        """Number of iterations (= atoms selected): min(k, iterations)."""
        if self.k is None:
            raise ValueError(
                f"inference {self.name!r} needs an atom budget but encoder.inference.k is null;"
                " set encoder.inference.k (e.g. to data.K)"
            )
        if self.k < 1:
            raise ValueError(f"encoder.inference.k={self.k} is invalid: must be at least 1")
        return min(self.k, self.iterations)

    @abstractmethod
    def step_flops(self, samples: int, latents: int, dim: int, step: int) -> Flops:
        """FLOPs of iteration ``step`` (1-based), per replica, set-up excluded."""

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        # Dᵀx, G = DᵀD, and ||x|| for the zero-correlation floor.
        matmul = 2 * dim * latents * samples + 2 * dim * latents * latents
        return Flops(matmul=matmul, elementwise=2 * dim * samples)

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """The most expensive iteration: the last one at the full budget."""
        return self.step_flops(samples, latents, dim, max(self.steps(), 1))

    def flops(self, samples: int, latents: int, dim: int) -> Flops:
        steps = self.steps()
        if steps == 0:
            return Flops()
        total = self.setup_flops(samples, latents, dim)
        for step in range(1, steps + 1):
            total += self.step_flops(samples, latents, dim, step)
        if self.tolerance > 0:
            total += Flops(elementwise=4 * latents * samples * steps)
        return total


@register_inference
class MatchingPursuit(Pursuit):
    name = "mp"
    label = "MP"
    needs_budget = True

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, _, latents = atoms.shape
        samples = x.shape[1]
        codes = torch.zeros(replicas, samples, latents, dtype=atoms.dtype, device=atoms.device)
        steps = self.steps()
        if steps == 0:
            return codes.transpose(1, 2).contiguous()
        gram, corr, floor = prepare(x, atoms)
        corr = corr.clone()
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(atoms.dtype).tiny)  # (R, L)
        replica = torch.arange(replicas, device=atoms.device)[:, None]
        for _ in range(steps):
            pick, ok = select(corr, self.nonnegative, None, floor)
            if not ok.any():
                break
            value = corr.gather(-1, pick[..., None]).squeeze(-1) / norms.gather(1, pick)
            value = torch.where(ok, value, 0.0)  # (R, B)
            codes.scatter_add_(-1, pick[..., None], value[..., None])
            corr.sub_(gram[replica, pick] * value[..., None])  # G's column = row (symmetric)
            if self.tolerance > 0:
                change = value.norm(dim=1) / codes.flatten(1).norm(dim=1).clamp_min(1e-30)
                if float(change.max()) < self.tolerance:
                    break
        return codes.transpose(1, 2).contiguous()

    def step_flops(self, samples: int, latents: int, dim: int, step: int) -> Flops:
        # argmax, gather G's column, scale and subtract it, coefficient and scatter.
        return Flops(elementwise=4 * latents * samples + 4 * samples)


@register_inference
class OrthogonalMatchingPursuit(Pursuit):
    name = "omp"
    label = "OMP"
    needs_budget = True

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        steps = self.steps()
        support = Support(x, atoms)
        for step in range(steps):
            corr = support.correlations() if step else support.corr0
            pick, ok = select(corr, self.nonnegative, support.chosen, support.floor)
            if not ok.any():
                break
            previous = support.coef
            support.add(pick, ok)
            gram, rhs = support.gram(), support.rhs()
            if self.nonnegative:
                support.coef = nnls(gram, rhs, support.valid, support.coef, support.floor)
            else:
                support.coef = masked_solve(gram, rhs, support.valid)
            if self.tolerance > 0 and support.relative_change(previous) < self.tolerance:
                break
        return support.codes()

    def step_flops(self, samples: int, latents: int, dim: int, step: int) -> Flops:
        t = step
        # Correlations from the previous support (none at the first iteration), selection, gathers;
        # the (non-negative) least squares on t atoms: ~3 batched t×t solves and 2 dual updates
        # for NNLS (an estimate: Lawson–Hanson's pass count depends on the data), 1 solve for LS.
        matmul = 2 * latents * (t - 1) * samples
        solves = 3 if self.nonnegative else 1
        small = solves * (2 * t**3 // 3 + 4 * t * t) + (4 * t * t if self.nonnegative else 0)
        elementwise = (4 * latents + 2 * t * t + small) * samples
        return Flops(matmul=matmul, elementwise=elementwise)


def prepare(x: Tensor, atoms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gram matrices G = DᵀD (R, L, L), correlations Dᵀx laid out (R, B, L), and the per-sample
    floor (B,) below which a correlation counts as zero."""
    gram = atoms.transpose(1, 2) @ atoms
    corr0 = x.T.to(atoms.dtype) @ atoms  # (B, M) @ (R, M, L) -> (R, B, L)
    floor = ZERO_CORRELATION_EPS * torch.finfo(atoms.dtype).eps * x.norm(dim=0).to(atoms.dtype)
    return gram, corr0, floor


def select(
    corr: Tensor, nonnegative: bool, exclude: Tensor | None, floor: Tensor
) -> tuple[Tensor, Tensor]:
    """Best atom per sample, (R, B) indices, and whether it is a real (non-zero) selection."""
    score = corr if nonnegative else corr.abs()
    if exclude is not None:
        score = score.masked_fill(exclude, float("-inf"))
    best, pick = score.max(dim=-1)
    return pick, best > floor


class Support:
    """Per-sample supports Ω (R, B, T slots) with coefficients, batched over replicas and samples.

    A slot is ``valid`` when it holds a newly selected atom; invalid slots (nothing selected, or an
    atom already in the support) keep a zero coefficient. ``rows`` caches G's rows G[Ω, :].
    """

    def __init__(self, x: Tensor, atoms: Tensor) -> None:
        self.replicas, _, self.latents = atoms.shape
        self.samples = x.shape[1]
        self.gram_full, self.corr0, self.floor = prepare(x, atoms)
        shape = (self.replicas, self.samples, 0)
        self.index = torch.zeros(shape, dtype=torch.long, device=atoms.device)
        self.valid = torch.zeros(shape, dtype=torch.bool, device=atoms.device)
        self.coef = torch.zeros(shape, dtype=atoms.dtype, device=atoms.device)
        self.rows = torch.zeros((*shape, self.latents), dtype=atoms.dtype, device=atoms.device)
        self.chosen = torch.zeros(
            self.replicas, self.samples, self.latents, dtype=torch.bool, device=atoms.device
        )
        self._replica = torch.arange(self.replicas, device=atoms.device)[:, None]

    def add(self, pick: Tensor, ok: Tensor) -> Tensor:
        """Append one slot per sample; returns its validity (selected and not already in Ω)."""
        already = self.chosen.gather(-1, pick[..., None]).squeeze(-1)
        new = ok & ~already
        self.chosen.scatter_(-1, pick[..., None], (new | already)[..., None])
        self.index = torch.cat([self.index, pick[..., None]], dim=-1)
        self.valid = torch.cat([self.valid, new[..., None]], dim=-1)
        zero = torch.zeros_like(pick[..., None], dtype=self.coef.dtype)
        self.coef = torch.cat([self.coef, zero], dim=-1)
        row = self.gram_full[self._replica, pick]  # G[pick, :], (R, B, L)
        self.rows = torch.cat([self.rows, row[..., None, :]], dim=-2)
        return new

    def gram(self) -> Tensor:
        """G restricted to the support, (R, B, T, T)."""
        t = self.index.shape[-1]
        return self.rows.gather(-1, self.index[..., None, :].expand(-1, -1, t, -1))

    def rhs(self) -> Tensor:
        """Dᵀx restricted to the support, (R, B, T)."""
        return self.corr0.gather(-1, self.index)

    def apply(self, vector: Tensor) -> Tensor:
        """G[:, Ω]·v for a vector on the support (R, B, T): (R, B, L), one batched matmul."""
        return (self.rows.transpose(-1, -2) @ vector[..., None]).squeeze(-1)

    def correlations(self) -> Tensor:
        """Dᵀ(x - D·S) = Dᵀx - G[:, Ω]·s_Ω, (R, B, L)."""
        return self.corr0 - self.apply(self.coef)

    def relative_change(self, previous: Tensor) -> float:
        padded = torch.nn.functional.pad(previous, (0, self.coef.shape[-1] - previous.shape[-1]))
        change = (self.coef - padded).flatten(1).norm(dim=1)
        scale = self.coef.flatten(1).norm(dim=1).clamp_min(torch.finfo(self.coef.dtype).tiny)
        return float((change / scale).max())

    def codes(self) -> Tensor:
        """Dense codes (R, L, B)."""
        dense = self.coef.new_zeros(self.replicas, self.samples, self.latents)
        dense.scatter_add_(-1, self.index, torch.where(self.valid, self.coef, 0.0))
        return dense.transpose(1, 2).contiguous()


def masked_solve(gram: Tensor, rhs: Tensor, mask: Tensor) -> Tensor:
    """Least squares restricted to ``mask``: G_PP z_P = b_P and z = 0 off P, batched (…, T, T)."""
    t = gram.shape[-1]
    eps = torch.finfo(gram.dtype).eps
    ridge = RIDGE_EPS * eps * gram.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).clamp_min(1.0)
    both = mask[..., :, None] & mask[..., None, :]
    diagonal = torch.where(mask, ridge, 1.0)
    eye = torch.eye(t, dtype=gram.dtype, device=gram.device)
    system = torch.where(both, gram, 0.0) + eye * diagonal[..., None]
    solution = torch.linalg.solve_ex(system, torch.where(mask, rhs, 0.0)[..., None])[0].squeeze(-1)
    return torch.where(mask, solution, 0.0)


def nnls(gram: Tensor, rhs: Tensor, valid: Tensor, coef: Tensor, floor: Tensor) -> Tensor:
    """min ½sᵀGs - bᵀs over s ≥ 0 on the ``valid`` slots, by Lawson–Hanson, batched (…, T).

    Warm-started from the feasible ``coef`` (the previous support's solution, zero on new slots).
    Each outer pass frees the slot of largest positive dual b - G·s (above ``floor``); the inner
    passes solve on the free set and, where that leaves it, step back to the feasible boundary
    and drop the blocking slot. Passes are capped (outer 2T + 2, inner T + 1), which in exact
    arithmetic the inner loop never reaches; the outer cap only guards against numerical cycling.
    """
    t = gram.shape[-1]
    free = valid & (coef > 0)
    slots = torch.arange(t, device=gram.device)
    for _ in range(2 * t + 2):
        dual = rhs - (gram * coef[..., None, :]).sum(-1)
        candidate = valid & ~free & (dual > floor[..., None])
        grow = candidate.any(-1, keepdim=True)
        if not grow.any():
            break
        enter = dual.masked_fill(~candidate, float("-inf")).argmax(-1, keepdim=True)
        free = free | ((slots == enter) & grow)
        coef, free = descend(gram, rhs, free, coef)
    return coef


def descend(gram: Tensor, rhs: Tensor, free: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Lawson–Hanson's inner loop from feasible ``coef`` (≥ 0; zero off ``free``): solve on the
    free set; where that leaves the non-negative orthant, step back to its boundary and drop the
    blocking slots (at most T + 1 passes). Returns the solution and its free set."""
    tiny = torch.finfo(gram.dtype).tiny
    slots = torch.arange(gram.shape[-1], device=gram.device)
    for _ in range(gram.shape[-1] + 1):
        z = masked_solve(gram, rhs, free)
        bad = free & (z <= 0)
        infeasible = bad.any(-1, keepdim=True)
        ratio = torch.where(bad, coef / (coef - z).clamp_min(tiny), float("inf"))
        alpha, block = ratio.min(-1, keepdim=True)
        stepped = coef + alpha.clamp(max=1.0) * (z - coef)
        coef = torch.where(infeasible, stepped, z).clamp_min(0.0)
        free = free & ~(infeasible & ((slots == block) | (coef <= 0)))
        coef = torch.where(free, coef, 0.0)
        if not infeasible.any():
            break
    return coef, free
