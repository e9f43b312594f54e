"""The amortisation gap of a trained SAE: its encoder's codes against iterative inference with
its own decoder, on held-out activations.

Everything works in the SAE's normalised space, where its decoder is linear: the target of token
x is t = normalise(x) - b_dec and a code s reconstructs x̂ = denormalise(D·s + b_dec). Methods:

* ``encoder``: the SAE's own codes (one point).
* ``refit``: NNLS on the encoder's support (same L0 or lower, never higher).
* ``fista``: the L1-penalised objective, its weight bisected (log scale) on the first
  ``gap.search_tokens`` tokens until FISTA's mean L0 matches the encoder's; the curve is that
  weight × ``gap.curve``.
* ``omp``: non-negative OMP with k = TopK's k, else the encoder's mean L0 rounded; curve k ×
  ``gap.curve``.
* ``ito``: the paper's Adam on log-codes, warm-started from the encoder's codes, on the same
  objective as FISTA at the matched weight (× ``gap.curve``); codes below ``gap.ito_prune`` × the
  encoder's mean active code are zeroed (log-codes never reach 0) and count as inactive.

Metrics per point: normalised MSE and explained variance (of x, in the activation space, the
project's definitions in ``sparsegap.metrics``), mean L0, FLOPs per token (the algorithms' own
declared counts) and wall time per token. The matched point of each method (curve multiplier 1)
also gets the downstream LM loss (``lm_loss.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsegap import metrics
from sparsegap.config import InferenceConfig
from sparsegap.inference.adam_log import AdamLog
from sparsegap.inference.base import Inference
from sparsegap.inference.ista import FISTA
from sparsegap.inference.matching_pursuit import OrthogonalMatchingPursuit
from sparsegap.inference.refit import Refit
from sparsegap.pretrained.sae import PretrainedSAE

# OMP keeps the Gram rows of its support, (B, k, L) per chunk: chunks are sized to this many.
OMP_CHUNK_ELEMENTS = 1 << 25


@dataclass
class Point:
    """One (method, budget) measurement."""

    method: str
    budget: float | None  # FISTA/ITO: L1 weight; OMP: k; None for encoder and refit
    multiplier: float | None  # budget relative to the matched one (1 = matched L0)
    l0: float
    normalised_mse: float
    explained_variance: float
    flops_per_token: float
    seconds_per_token: float
    lm: dict[str, float] = field(default_factory=dict)  # ce_loss, kl, ce_recovered (matched)


@dataclass
class Measured:
    points: list[Point]
    matched_l1: float | None
    omp_k: int | None
    reconstructions: dict[str, Tensor]  # method → x̂ rows of the LM-loss tokens (matched point)

    def matched(self, method: str) -> Point | None:
        for p in self.points:
            if p.method == method and p.multiplier in (None, 1.0):
                return p
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "points": [asdict(p) for p in self.points],
            "matched_l1": self.matched_l1,
            "omp_k": self.omp_k,
        }


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    started = time.perf_counter()
    out = fn()
    if out.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def run_columns(
    solve: Callable[[Tensor, Tensor | None], Tensor],
    targets: Tensor,
    init: Tensor | None,
    batch: int,
) -> tuple[Tensor, float]:
    """Codes (T, L) for target rows (T, d) by ``solve(x columns (d, b), init (1, L, b))`` per
    batch of ``batch`` tokens; and the seconds spent."""
    parts, seconds = [], 0.0
    for part in _chunks(targets.shape[0], batch):
        x = targets[part].T.contiguous()
        start = None if init is None else init[part].T[None].contiguous()
        codes, spent = _timed(lambda x=x, start=start: solve(x, start))
        parts.append(codes[0].T)
        seconds += spent
    return torch.cat(parts), seconds


class GapMeasurement:
    """Runs every method on one SAE and one set of activation rows x (T, d)."""

    def __init__(self, sae: PretrainedSAE, x: Tensor, cfg: Any, keep_rows: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.sae, self.x, self.cfg = sae, x, cfg
        self.keep_rows = keep_rows  # the first rows whose reconstructions the LM loss needs
        self.say = progress or (lambda message: None)
        self.targets, self.state = sae.target(x)
        self.atoms = sae.atoms()[None].contiguous()  # (1, d, L)
        self.dim, self.latents = sae.dim, sae.latents
        self.reconstructions: dict[str, Tensor] = {}

    # ------------------------------------------------------------ metrics
    def reconstruct(self, codes: Tensor) -> Tensor:
        decoded = codes @ self.atoms[0].T + self.sae.weights["b_dec"]
        return self.sae.denormalise(decoded, self.state)

    def point(self, method: str, codes: Tensor, seconds: float, flops: float,
              budget: float | None = None, multiplier: float | None = None) -> Point:  # fmt: skip
        x_hat = self.reconstruct(codes)
        x_cols, hat_cols = self.x.T, x_hat.T[None]
        tokens = self.x.shape[0]
        if multiplier in (None, 1.0) and self.keep_rows:
            self.reconstructions[method] = x_hat[: self.keep_rows].detach()
        return Point(
            method=method,
            budget=budget,
            multiplier=multiplier,
            l0=float(metrics.l0(codes.T[None])[0]),
            normalised_mse=float(metrics.normalised_mse(x_cols, hat_cols)[0]),
            explained_variance=float(metrics.explained_variance(x_cols, hat_cols)[0]),
            flops_per_token=flops / tokens,
            seconds_per_token=seconds / tokens,
        )

    # ------------------------------------------------------------ methods
    def encoder(self) -> tuple[Tensor, Point]:
        y = self.targets + self.sae.weights["b_dec"]  # normalise(x)
        codes, seconds = _timed(lambda: self.sae.encode_normalised(y))
        flops = self.sae.encode_flops_per_token() * self.x.shape[0]
        return codes, self.point("encoder", codes, seconds, flops)

    def refit(self, codes: Tensor) -> Point:
        algorithm = Refit(InferenceConfig(name="refit"), 0.0)
        flops = 0.0

        def solve(x: Tensor, init: Tensor | None) -> Tensor:
            nonlocal flops
            out = algorithm(x, self.atoms, init)
            flops += algorithm.flops(x.shape[1], self.latents, self.dim).total
            return out

        refit, seconds = run_columns(solve, self.targets, codes, self.cfg.batch_tokens)
        return self.point("refit", refit, seconds, flops)

    def _fista(self, l1: float, targets: Tensor) -> tuple[Tensor, float, float]:
        cfg = InferenceConfig(name="fista", iterations=self.cfg.fista_iterations, l1_coeff=l1)
        algorithm = FISTA(cfg, l1)
        codes, seconds = run_columns(
            lambda x, _: algorithm(x, self.atoms), targets, None, self.cfg.batch_tokens
        )
        flops = algorithm.flops(targets.shape[0], self.latents, self.dim).total
        return codes, seconds, flops

    def match_l1(self, l0_target: float) -> float:
        """FISTA's L1 weight whose mean L0 on the first ``search_tokens`` tokens is closest to
        ``l0_target``: bisection in log space between 0 codes (the weight that zeroes every first
        step) and 1e-6 of it."""
        targets = self.targets[: self.cfg.search_tokens]
        top = float((targets @ self.atoms[0]).max()) * 2 * self.latents / self.dim
        lo, hi = math.log(max(top, 1e-12) * 1e-6), math.log(max(top, 1e-12))
        best = (math.inf, math.exp(hi))
        for _ in range(self.cfg.search_steps):
            mid = (lo + hi) / 2
            codes, _, _ = self._fista(math.exp(mid), targets)
            l0 = float((codes != 0).sum(dim=1).double().mean())
            best = min(best, (abs(l0 - l0_target), math.exp(mid)))
            if l0 > l0_target:
                lo = mid
            else:
                hi = mid
        return best[1]

    def fista(self, l1: float) -> list[Point]:
        points = []
        for m in self.cfg.curve:
            codes, seconds, flops = self._fista(l1 * m, self.targets)
            points.append(self.point("fista", codes, seconds, flops, l1 * m, m))
        return points

    def omp(self, k: int) -> list[Point]:
        points = []
        for m in self.cfg.curve:
            budget = max(1, round(k * m))
            cfg = InferenceConfig(name="omp", iterations=budget, k=budget)
            algorithm = OrthogonalMatchingPursuit(cfg, 0.0)
            batch = max(
                1, min(self.cfg.batch_tokens, OMP_CHUNK_ELEMENTS // (budget * self.latents))
            )
            codes, seconds = run_columns(
                lambda x, _, a=algorithm: a(x, self.atoms), self.targets, None, batch
            )
            flops = sum(
                algorithm.flops(p.stop - p.start, self.latents, self.dim).total
                for p in _chunks(self.x.shape[0], batch)
            )
            points.append(self.point("omp", codes, seconds, flops, budget, m))
        return points

    def ito(self, l1: float, codes: Tensor) -> list[Point]:
        active = codes[codes > 0]
        floor = self.cfg.ito_prune * (float(active.mean()) if active.numel() else 1.0)
        points = []
        for m in self.cfg.curve:
            cfg = InferenceConfig(
                name="adam_log",
                iterations=self.cfg.ito_iterations,
                lr=self.cfg.ito_lr,
                l1_coeff=l1 * m,
            )
            algorithm: Inference = AdamLog(cfg, l1 * m)
            out, seconds = run_columns(
                lambda x, init, a=algorithm: a(x, self.atoms, init), self.targets, codes,
                self.cfg.batch_tokens,
            )  # fmt: skip
            out = torch.where(out > floor, out, 0.0)
            flops = sum(
                algorithm.flops(p.stop - p.start, self.latents, self.dim).total
                for p in _chunks(self.x.shape[0], self.cfg.batch_tokens)
            )
            points.append(self.point("ito", out, seconds, flops, l1 * m, m))
        return points

    def run(self) -> Measured:
        methods = list(self.cfg.methods)
        self.say("encoder")
        codes, encoder_point = self.encoder()
        points = [encoder_point]
        l0 = encoder_point.l0
        matched_l1 = omp_k = None
        if "refit" in methods:
            self.say("refit (NNLS on the encoder's support)")
            points.append(self.refit(codes))
        if "fista" in methods or "ito" in methods:
            self.say(f"FISTA: searching the L1 weight for L0 = {l0:.2f}")
            matched_l1 = self.match_l1(l0)
        if "fista" in methods:
            self.say("FISTA curve")
            points += self.fista(matched_l1)
        if "omp" in methods:
            omp_k = self.sae.nominal_l0() or max(1, round(l0))
            self.say(f"OMP, k = {omp_k}")
            points += self.omp(omp_k)
        if "ito" in methods:
            self.say("ITO (Adam on log-codes, warm-started)")
            points += self.ito(matched_l1, codes)
        return Measured(points, matched_l1, omp_k, self.reconstructions)
