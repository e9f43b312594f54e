"""Best-subset refit: the ≤k-atom non-negative least-squares fit, searched from FISTA's support.

The support refit (``refit``) keeps every atom FISTA selected, spurious ones included: an L1
weight small enough to keep the small true codes also lets in atoms that absorb a little of the
signal, and NNLS keeps them; and where L1 picked a wrong atom, no refit on its support recovers.
This algorithm searches the supports of at most k atoms (k = ``encoder.inference.k``, null =
data.K) for the one that explains x. Per sample:

1. candidates: non-negative FISTA with the configured L1 weight and iterations, warm-started from
   ``init`` when given (so inside dictionary learning the support can still move); of its
   support, the ``candidates`` atoms with the largest values (c; null = k + 2);
2. every subset Ω of at most k of the c candidates is fitted by NNLS,
   s_Ω = argmin_{s ≥ 0} ||D_Ω·s - x||², and scored ||D_Ω·s_Ω - x||² + ``penalty``·σ̂²·|Ω|,
   |Ω| counting the atoms NNLS leaves non-zero; the lowest score is kept (the smaller support
   on ties);
3. local search over the whole dictionary, up to ``swaps`` rounds: every support that exchanges
   one atom for another (or for none) is fitted and scored, and a sample moves to the best when
   that lowers its score; a sample that no single exchange improves but whose residual stays
   above twice the noise's share, σ̂²·(M - |Ω|), tries exchanging two atoms at once (a local
   optimum of single exchanges: FISTA found a different combination of atoms that fits x nearly
   as well). Only samples that moved search again.

σ̂² is the noise variance per measurement, estimated per replica as the median over the call's
samples of r²/(M - k), r² the best residual of the subsets of k atoms (the residual's degrees of
freedom): without noise it is rounding error and the smallest exact fit wins; with noise an atom
must lower the squared residual by more than ``penalty`` noise variances to be kept (2 is
AIC/Mallows' C_p; more guards against choosing among many subsets). The estimate needs no noise
level in the config and follows the dictionary's error inside dictionary learning, at a price:
a sample's code depends, through σ̂², on the other samples of the call.

Cost: Σ_{j≤k} C(c, j) small NNLS fits per sample (26 for c = 5, k = 3; 120 for c = 7, k = 5),
then k·(L + 1) per sample and round of single exchanges, and C(k, 2)·C(L + 1, 2) per stuck
sample and round for pairs. Every fit runs batched over replicas, samples and supports: one
least-squares solve each, then Lawson–Hanson only for the supports it leaves negative, in sample
chunks whose gathered atoms stay within ``CHUNK_ELEMENTS``.
"""

from __future__ import annotations

import itertools
from functools import cache
from math import comb

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import InferenceConfig
from sparsegap.errors import need
from sparsegap.flops import Flops
from sparsegap.inference.base import Inference, register_inference
from sparsegap.inference.ista import FISTA
from sparsegap.inference.matching_pursuit import ZERO_CORRELATION_EPS, masked_solve, nnls

CHUNK_ELEMENTS = 1 << 22  # gathered atom entries per chunk (R·b·P·k·M): 16 MB in float32
EXTRA_CANDIDATES = 2  # candidates = k + this when encoder.inference.candidates is null


@cache
def subsets(candidates: int, k: int) -> tuple[Tensor, Tensor]:
    """Every subset of at most k of ``candidates`` slots, smallest first: slot indices (P, k),
    padded with 0, and which entries are real (P, k). The empty subset is row 0."""
    rows = [c for size in range(k + 1) for c in itertools.combinations(range(candidates), size)]
    index = torch.zeros(len(rows), k, dtype=torch.long)
    valid = torch.zeros(len(rows), k, dtype=torch.bool)
    for p, row in enumerate(rows):
        index[p, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[p, : len(row)] = True
    return index, valid


@cache
def exchanges(k: int, latents: int, size: int) -> Tensor:
    """The moves of the local search that rewrite ``size`` of a support's k slots: (P, k), the
    atom each slot takes (``latents`` = none: the slot is emptied) or -1 where it is kept. Every
    choice of slots, and of distinct atoms (or none) for them."""
    moves = []
    for slots in itertools.combinations(range(k), size):
        for atoms in itertools.combinations(range(latents + 1), size):
            row = [-1] * k
            for slot, atom in zip(slots, atoms, strict=True):
                row[slot] = atom
            moves.append(row)
    return torch.tensor(moves, dtype=torch.long).view(-1, k)


@register_inference
class BestSubset(Inference):
    name = "best_subset"
    label = "best-subset NNLS"
    needs_budget = True

    @classmethod
    def check(cls, cfg: DictConfig, key: str) -> None:
        need(cfg.nonnegative, f"{key}.nonnegative", cfg.nonnegative, "best_subset is NNLS: true")

    def __init__(self, cfg: InferenceConfig, l1_coeff: float) -> None:
        super().__init__(cfg, l1_coeff)
        self.k: int | None = cfg.k
        self.candidates: int | None = cfg.candidates
        self.penalty = cfg.penalty
        self.swaps = cfg.swaps
        self.fista = FISTA(cfg, l1_coeff)
        # Supports fitted per sample in the last call, for ``flops`` (None before any call).
        self.fits_per_sample: float | None = None

    def budget(self, latents: int) -> tuple[int, int]:
        """(k, c): the largest support and the number of candidates, for ``latents`` atoms."""
        if self.k is None:
            raise ValueError(
                f"inference {self.name!r} needs an atom budget but encoder.inference.k is null;"
                " set encoder.inference.k (e.g. to data.K)"
            )
        c = self.k + EXTRA_CANDIDATES if self.candidates is None else self.candidates
        c = min(c, latents)
        return min(self.k, c), c

    @torch.no_grad()
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor:
        replicas, dim, latents = atoms.shape
        k, c = self.budget(latents)
        if self.iterations > 0:
            start = self.fista(x, atoms, init)
        elif init is not None:
            start = init.clamp_min(0)
        else:
            start = atoms.new_zeros(replicas, latents, x.shape[1])
        x = x.to(atoms.dtype)
        rows = atoms.transpose(1, 2).contiguous()  # (R, L, M): gathering rows is the fast way
        value, candidate = start.transpose(1, 2).topk(c, dim=-1)  # (R, B, c), largest first
        slot, real = (t.to(atoms.device) for t in subsets(c, k))
        index = candidate[:, :, slot]  # (R, B, P, k)
        valid = real & (value > 0)[:, :, slot]  # a slot past FISTA's support holds no atom
        coef, residual = solve(x, rows, index, valid)
        fits = slot.shape[0] * x.shape[1]
        # σ̂² per replica from the best k-atom fits (the last C(c, k) subsets).
        largest = residual[..., -comb(c, k) :].amin(-1)  # (R, B)
        noise = largest.median(dim=1).values[:, None] / max(dim - k, 1)  # (R, 1)
        floor = (ZERO_CORRELATION_EPS * torch.finfo(atoms.dtype).eps) ** 2 * x.square().sum(0)
        cost = self.penalty * torch.maximum(noise, floor)  # (R, B)
        state = best_of(index, valid, coef, residual, cost)  # ties: the smallest subset
        active = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        for _ in range(self.swaps):
            state, moved, fitted = self.exchange(x, rows, state, cost, floor, active, 1)
            # A sample that no single exchange improves but whose residual stays well above the
            # noise's share may sit in a local optimum of single exchanges (FISTA found another
            # combination of atoms that fits x nearly as well): it tries exchanging two at once.
            coef, residual = state[2:4]
            share = torch.maximum(noise * (dim - (coef > 0).sum(-1)).clamp_min(1), floor)
            stuck = active & ~moved & (residual > 2 * share).any(0)
            state, jumped, more = self.exchange(x, rows, state, cost, floor, stuck, 2)
            fits += fitted + more
            active = moved | jumped
            if not active.any():
                break
        self.fits_per_sample = fits / max(x.shape[1], 1)
        index, valid, coef = state[:3]
        dense = coef.new_zeros(replicas, x.shape[1], latents)
        dense.scatter_add_(-1, index, torch.where(valid, coef, 0.0))
        return dense.transpose(1, 2).contiguous()

    @staticmethod
    def exchange(
        x: Tensor,
        rows: Tensor,
        state: State,
        cost: Tensor,
        floor: Tensor,
        columns: Tensor,
        size: int,
    ) -> tuple[State, Tensor, int]:
        """One round of exchanges of ``size`` atoms for the samples ``columns`` (B,): the state
        with every sample moved to its best neighbour where that lowers its score by more than
        ``floor``, which samples moved (B,), and the number of supports fitted per replica."""
        if not columns.any():
            return state, torch.zeros_like(columns), 0
        part = tuple(t[:, columns] for t in state)
        near = neighbour(x[:, columns], rows, part, cost[:, columns], size)
        better = near[-1] < part[-1] - floor[columns]  # (R, b)
        moved = torch.zeros_like(columns)
        moved[columns] = better.any(0)
        k, latents = state[0].shape[-1], rows.shape[1]
        fitted = len(exchanges(k, latents, size)) * int(columns.sum())
        return accept(state, near, columns, better), moved, fitted

    def flops(self, samples: int, latents: int, dim: int) -> Flops:
        """FISTA's count, then per sample and fitted support (all padded to k slots): its Gram
        matrix, D_Ωᵀx and the fit (2·M·k² + 4·M·k, matmul), the least-squares solve and, for
        the supports it leaves negative, Lawson–Hanson (counted as three more k×k solves), the
        residual and score (elementwise). The number of supports fitted per sample is the last
        call's (the local search's rounds depend on the data); before any call, the subset
        search and one round of single exchanges."""
        k, c = self.budget(latents)
        fits = self.fits_per_sample
        if fits is None:
            fits = sum(comb(c, j) for j in range(k + 1)) + k * (latents + 1)
        per_fit = Flops(
            matmul=2 * dim * k * k + 4 * dim * k,
            elementwise=4 * (2 * k**3 // 3 + 4 * k * k) + 3 * dim + 3 * k,
        )
        start = self.fista.flops(samples, latents, dim) if self.iterations else Flops()
        return start + per_fit * round(fits * samples)

    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        return self.fista.iteration_flops(samples, latents, dim)


State = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # index, valid, coef, residual, score


def best_of(index: Tensor, valid: Tensor, coef: Tensor, residual: Tensor, cost: Tensor) -> State:
    """Per sample, the support of lowest score residual + cost·(non-zero atoms) among P fitted
    ones (index, valid, coef (R, B, P, k), residual (R, B, P)); the first on ties."""
    score = residual + cost[..., None] * (coef > 0).sum(-1)
    best = score.argmin(-1)[..., None]  # (R, B, 1)
    wide = best[..., None].expand(-1, -1, 1, index.shape[-1])
    chosen = (t.gather(2, wide).squeeze(2) for t in (index, valid, coef))
    return (*chosen, residual.gather(2, best).squeeze(2), score.gather(2, best).squeeze(2))


def accept(state: State, near: State, columns: Tensor, better: Tensor) -> State:
    """``state`` with the samples ``columns`` moved to ``near`` where ``better`` (R, b)."""
    out = []
    for old, new in zip(state, near, strict=True):
        old = old.clone()
        keep = better.view(*better.shape, *([1] * (old.dim() - 2)))
        old[:, columns] = torch.where(keep, new, old[:, columns])
        out.append(old)
    return tuple(out)


def neighbour(x: Tensor, rows: Tensor, state: State, cost: Tensor, size: int) -> State:
    """The best support one exchange of ``size`` slots away from each sample's (``exchanges``),
    in sample chunks of at most CHUNK_ELEMENTS gathered atom entries."""
    index, valid = state[:2]
    replicas, samples, k = index.shape
    latents, dim = rows.shape[1:]
    table = exchanges(k, latents, size).to(index.device)  # (P, k)
    replaced = table >= 0
    chunk = max(1, CHUNK_ELEMENTS // (replicas * table.shape[0] * k * dim))
    parts = []
    for start in range(0, samples, chunk):
        part = slice(start, min(start + chunk, samples))
        old, ok = index[:, part, None], valid[:, part, None]  # (R, b, 1, k)
        new_index = torch.where(replaced, table.clamp(0, latents - 1), old)
        new_valid = torch.where(replaced, table < latents, ok)
        # An atom that a kept slot already holds is not added twice: that slot is emptied.
        kept = ok & ~replaced  # (R, b, P, k)
        held = ((table[..., :, None] == old[..., None, :]) & kept[..., None, :]).any(-1)
        new_valid = new_valid & ~(replaced & held)
        coef, residual = solve(x[:, part], rows, new_index, new_valid)
        parts.append(best_of(new_index, new_valid, coef, residual, cost[:, part]))
    return tuple(torch.cat(t, 1) for t in zip(*parts, strict=True))


def fit_nonnegative(gram: Tensor, rhs: Tensor, valid: Tensor, floor: Tensor) -> Tensor:
    """NNLS on each support (…, k): the least-squares fit where it is already non-negative
    (most supports near the optimum: it then meets the optimality conditions), else
    Lawson–Hanson, run on those supports alone so that their passes do not cost the rest."""
    coef = masked_solve(gram, rhs, valid)
    hard = (valid & (coef <= 0)).any(-1)
    if hard.any():
        start = torch.zeros_like(rhs[hard])
        coef[hard] = nnls(gram[hard], rhs[hard], valid[hard], start, floor[hard])
    return coef


def solve(x: Tensor, rows: Tensor, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """NNLS of every sample on each of its supports: atoms ``index`` (R, B, P, k) where
    ``valid``, atoms as ``rows`` (R, L, M), samples x (M, B). Returns the coefficients
    (R, B, P, k) and squared residuals (R, B, P), in sample chunks of at most CHUNK_ELEMENTS
    gathered atom entries."""
    replicas, samples, supports, k = index.shape
    dim = rows.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // (replicas * supports * max(k, 1) * dim))
    replica = torch.arange(replicas, device=rows.device)[:, None, None, None]
    coefs, residuals = [], []
    for start in range(0, samples, chunk):
        part = slice(start, min(start + chunk, samples))
        xs, ok = x[:, part], valid[:, part]
        chosen = rows[replica, index[:, part]] * ok[..., None]  # (R, b, P, k, M)
        gram = chosen @ chosen.transpose(-1, -2)
        rhs = torch.einsum("rbpkm,mb->rbpk", chosen, xs)
        floor = ZERO_CORRELATION_EPS * torch.finfo(rows.dtype).eps * xs.norm(dim=0)
        floor = floor[None, :, None].expand(replicas, -1, supports)
        coef = fit_nonnegative(gram, rhs, ok, floor)
        fit = torch.einsum("rbpkm,rbpk->rbpm", chosen, coef)
        coefs.append(coef)
        residuals.append((fit - xs.T[None, :, None, :]).square().sum(-1))
    return torch.cat(coefs, 1), torch.cat(residuals, 1)
