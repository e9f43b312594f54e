"""Classical dictionary learning by alternating minimisation (Olshausen & Field 1997; MOD, Engan
et al. 1999), trained without gradients through the ``Encoder.train_step`` hook.

Each training step, per replica and batched over replicas:

1. sparse inference of every training code with ``encoder.inference`` (default: non-negative FISTA)
   against the current dictionary, warm-started from the previous step's codes (the pursuits
   ignore the warm start);
2. dictionary update, ``encoder.dictionary_update``:

   * ``least_squares`` (MOD): D = X·Sᵀ(S·Sᵀ + εI)⁻¹, ε = ``ridge`` × mean diag(S·Sᵀ);
   * ``gradient``: one step D ← D − (D·S − X)·Sᵀ / ||S·Sᵀ||₂ on ½||D·S − X||²;

3. unused atoms (no training code selects them) and the less used atom of each near-duplicate
   pair (|cosine| > ``duplicate_cosine``) restart at the training residual of a sample drawn with
   probability ∝ its squared residual, from the replica's own generator (seeded seed + i, so
   replica i still equals a one-replica run with seed + i);
4. columns renormalised to unit norm, the codes' rows rescaled so that D·S is unchanged.

With ``encoder.restarts`` = c, every replica trains 1 + c candidate dictionaries side by side
(candidate 0 from the decoder's initialisation, the others from seeds of their own) and exposes,
after each step, the one with the lowest training objective ||D·S − X||²/(M·B) + l1·mean(S) (the
inference's L1 weight): restarts are chosen without labels.

Test codes: the same inference against the learned dictionary, from zero, with
``encoder.test_iterations`` iterations (training steps are warm-started and need few; a cold
start needs more), or another algorithm with the same settings, ``encoder.test_inference``:
e.g. ``best_subset``, which prunes FISTA's support to the ≤k-atom NNLS fit, costs too much to
run on every candidate at every step but once on the test set is cheap. ``best_subset`` as
``encoder.inference.name`` runs it as the code step of every training step too (warm-started
FISTA, then the subset search).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sparsegap.config import EncoderConfig, InferenceConfig, ranged
from sparsegap.encoders.base import Encoder, InferenceEncoder, register_encoder
from sparsegap.errors import choice
from sparsegap.flops import Flops, renormalise_columns
from sparsegap.inference import INFERENCE, build_inference

# Offset of the resampling generators' seeds from the replica seeds, so that the restarts draw a
# stream of their own rather than the one that initialised the decoder.
RESAMPLE_SEED_OFFSET = 1_000_003
# Candidate c ≥ 1 of replica i (``encoder.restarts``) starts from a Gaussian dictionary drawn with
# seed + i + c·RESTART_SEED_OFFSET.
RESTART_SEED_OFFSET = 7_919_000


DICTIONARY_UPDATES = ("least_squares", "gradient")  # encoder.dictionary_update


def _dl_inference() -> InferenceConfig:
    return InferenceConfig(name="fista", iterations=20, l1_coeff=0.2)


@dataclass
class DictionaryLearningConfig(EncoderConfig):
    """Classical alternating minimisation (unknown scenario): each training step infers the
    training codes with ``inference`` (warm-started from the previous step's codes) against the
    current dictionary, then updates the dictionary (least squares D = X·Sᵀ(S·Sᵀ + εI)⁻¹, or one
    gradient step) and renormalises it; unused atoms restart at a training residual. Test codes:
    the same inference. No Adam."""

    name: str = "dictionary_learning"
    dictionary_update: str = "least_squares"  # least_squares | gradient
    # ε of the least-squares update, relative to the mean diagonal of S·Sᵀ
    ridge: float = ranged(1e-6, ge=0)
    resample_dead: bool = True  # restart unused and near-duplicate atoms at a random residual
    # resample_dead: atoms with |cosine| above this are duplicates
    duplicate_cosine: float = ranged(0.95, gt=0, le=1)
    # extra candidate dictionaries per replica; the lowest objective is kept
    restarts: int = ranged(19, ge=0)
    # inference iterations for test codes; null = inference's
    test_iterations: int | None = ranged(300, ge=0)
    # algorithm of the test codes (an encoder.inference.name, same settings); null = inference's
    test_inference: str | None = None
    # training and test codes: non-negative FISTA, l1 0.2, 20 warm-started iterations per step
    inference: InferenceConfig = field(default_factory=_dl_inference)


@register_encoder
class DictionaryLearning(InferenceEncoder, Encoder):
    name = "dictionary_learning"
    config = DictionaryLearningConfig
    label = "dictionary learning (alt. min.)"
    kind = "iterative"
    scenarios = ("unknown",)
    per_sample = True

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        e = cfg.encoder
        choice("encoder.dictionary_update", e.dictionary_update, DICTIONARY_UPDATES)
        super().check(cfg)
        if e.test_inference is not None:
            choice("encoder.test_inference", e.test_inference, tuple(INFERENCE))
            INFERENCE[e.test_inference].check(e.inference, "encoder.inference")

    @classmethod
    def describe(cls, encoder: Mapping[str, Any]) -> str:
        test = encoder.get("test_inference")
        tested = f"; test: {INFERENCE[test].label}" if test is not None else ""
        return f"dictionary learning (alt. min., {cls.inference_label(encoder)}{tested})"

    # The scenario's loss is only evaluated (logged); the encoder's inference has its own L1.
    l1_penalty = True

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        samples = kw["train_samples"]
        self.candidates = 1 + cfg.restarts
        self.register_buffer("codes", torch.zeros(self.replicas, self.latents, samples))
        # Every candidate's dictionary and codes, replica-major (R·C, ·, ·); filled at the first
        # step (candidate 0 from the decoder's initialisation).
        self.register_buffer("all_atoms", torch.zeros(0))
        self.register_buffer("all_codes", torch.zeros(0))
        self.inference = build_inference(cfg.inference, kw["l1_coeff"])
        test = cfg.inference.iterations if cfg.test_iterations is None else cfg.test_iterations
        name = cfg.inference.name if cfg.test_inference is None else cfg.test_inference
        test_cfg = OmegaConf.merge(
            OmegaConf.structured(cfg.inference), {"iterations": test, "name": name}
        )
        self.test_inference = build_inference(test_cfg, kw["l1_coeff"])
        seeds = [g.initial_seed() for g in kw["generators"]]
        self.generators = [
            torch.Generator().manual_seed(seed + RESAMPLE_SEED_OFFSET * (1 + c))
            for seed in seeds
            for c in range(self.candidates)
        ]
        self.restart_seeds = [
            seed + RESTART_SEED_OFFSET * c for seed in seeds for c in range(1, self.candidates)
        ]
        self.resampled = 0  # atoms restarted so far, all replicas and candidates together

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The training codes of the last step (x is the training set, as for sparse coding)."""
        return self.codes if index is None else self.codes[:, :, index]

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        return self.test_inference(x, atoms)

    @torch.no_grad()
    def train_step(self, x: Tensor, decoder) -> bool:
        if decoder is None or not decoder.learned:
            raise ValueError("dictionary_learning needs a learned decoder (scenario=unknown)")
        weight = decoder.weight.detach()
        if self.all_atoms.numel() == 0:
            self.start(weight)
        x = x.to(weight.dtype)
        atoms, codes = self.all_atoms, self.inference(x, self.all_atoms, init=self.all_codes)
        atoms = self.update_dictionary(x, atoms, codes)
        if self.cfg.resample_dead:
            self.resample_unused(x, atoms, codes)
        norms = atoms.norm(dim=1, keepdim=True).clamp_min_(1e-12)  # (R·C, 1, L)
        atoms.div_(norms)
        codes.mul_(norms.transpose(1, 2))  # D·S unchanged
        self.all_atoms.copy_(atoms)
        self.all_codes.copy_(codes)
        # Keep, per replica, the candidate with the lowest training objective (no labels used).
        residual = torch.matmul(atoms, codes) - x
        objective = residual.square().mean(dim=(1, 2)) + self.inference.l1_coeff * codes.mean(
            dim=(1, 2)
        )
        best = objective.view(self.replicas, self.candidates).argmin(dim=1)
        chosen = torch.arange(self.replicas, device=best.device) * self.candidates + best
        decoder.weight.copy_(atoms[chosen])
        self.codes.copy_(codes[chosen])
        return True

    def start(self, weight: Tensor) -> None:
        """Candidate 0 of replica i is the decoder's initialisation; candidate c ≥ 1 a Gaussian
        dictionary drawn from seed + i + c·RESTART_SEED_OFFSET."""
        replicas, dim, latents = weight.shape
        atoms = weight.new_empty(replicas, self.candidates, dim, latents)
        atoms[:, 0] = weight
        draws = [
            torch.randn(dim, latents, generator=torch.Generator().manual_seed(seed))
            for seed in self.restart_seeds
        ]
        if draws:
            atoms[:, 1:] = (
                torch.stack(draws).view(replicas, self.candidates - 1, dim, latents).to(weight)
            )
        atoms = atoms.view(replicas * self.candidates, dim, latents)
        self.all_atoms = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.all_codes = self.codes.repeat_interleave(self.candidates, dim=0)

    def update_dictionary(self, x: Tensor, atoms: Tensor, codes: Tensor) -> Tensor:
        gram = codes @ codes.transpose(1, 2)  # S·Sᵀ (R, L, L)
        if self.cfg.dictionary_update == "least_squares":
            cross = torch.matmul(x, codes.transpose(1, 2))  # X·Sᵀ (R, M, L)
            scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)  # (R,)
            eye = torch.eye(self.latents, dtype=gram.dtype, device=gram.device)
            system = gram + (self.cfg.ridge * scale + 1e-12).view(-1, 1, 1) * eye
            # D·(S·Sᵀ + εI) = X·Sᵀ, the system symmetric: solve (S·Sᵀ + εI)·Dᵀ = S·Xᵀ.
            solved = torch.linalg.solve_ex(system, cross.transpose(1, 2))[0].transpose(1, 2)
            # An atom no code uses keeps its old direction (its least-squares column is zero).
            used = (codes != 0).any(dim=2)[:, None, :]
            return torch.where(used, solved, atoms)
        lipschitz = torch.linalg.matrix_norm(gram.cpu().double(), ord=2).to(gram)
        step = lipschitz.clamp_min(1e-12).reciprocal().view(-1, 1, 1)
        residual = torch.matmul(atoms, codes) - x
        return atoms - step * (residual @ codes.transpose(1, 2))

    def resample_unused(self, x: Tensor, atoms: Tensor, codes: Tensor) -> None:
        """Restart atoms that no training code uses, and the less used of two near-duplicates
        (|cosine| above ``duplicate_cosine``), at a training residual, in place."""
        unused = ~(codes != 0).any(dim=2)  # (R, L)
        if self.cfg.duplicate_cosine < 1:
            unit = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cosine = (unit.transpose(1, 2) @ unit).abs().triu(diagonal=1)  # (R, L, L), i < j
            close = cosine > self.cfg.duplicate_cosine
            if close.any():
                usage = codes.sum(dim=2)  # (R, L)
                # Of each close pair (i, j) the less used atom restarts.
                less_i = usage[:, :, None] < usage[:, None, :]
                unused |= (close & less_i).any(dim=2) | (close & ~less_i).any(dim=1)
        if not unused.any():
            return
        for r in torch.nonzero(unused.any(dim=1)).flatten().tolist():
            dead = torch.nonzero(unused[r]).flatten()
            residual = x - atoms[r] @ codes[r]  # (M, B)
            weight = residual.square().sum(0).double().cpu()
            if float(weight.sum()) <= 0:
                continue
            picks = torch.multinomial(weight, len(dead), generator=self.generators[r])
            atoms[r][:, dead] = residual[:, picks.to(residual.device)]
            self.resampled += len(dead)

    def train_step_flops(self, samples: int) -> Flops:
        m, n, b = self.dim, self.latents, samples
        step = self.inference.flops(b, n, m)
        step += Flops(matmul=2 * n * n * b)  # S·Sᵀ
        if self.cfg.dictionary_update == "least_squares":
            # X·Sᵀ, one L×L solve with M right-hand sides (LU 2L³/3 + 2L²M), ridge, usage test.
            step += Flops(
                matmul=2 * m * n * b, elementwise=2 * n**3 // 3 + 2 * n * n * m + 2 * n + n * b
            )
        else:
            # ||S·Sᵀ||₂ (eigen-decomposition ~4L³), residual, gradient, step.
            step += Flops(matmul=4 * m * n * b, elementwise=4 * n**3 + m * b + 2 * m * n)
        if self.cfg.resample_dead:
            # Usage test and sums; atom cosines (residuals only when an atom restarts).
            step += Flops(matmul=2 * n * n * m, elementwise=2 * n * b + 3 * m * n + 2 * n * n)
        step += renormalise_columns(m, n) + Flops(elementwise=n * b)  # rescale the codes
        # The candidates' training objectives: decode, residual, square, means.
        step += Flops(matmul=2 * m * n * b, elementwise=3 * m * b + 2 * n * b)
        return step * self.candidates

    def forward_flops(self, samples: int) -> Flops:
        return Flops()  # the stored codes

    def backward_flops(self, samples: int) -> Flops:
        return Flops()

    def infer_flops(self, samples: int) -> Flops:
        return self.test_inference.flops(samples, self.latents, self.dim)
