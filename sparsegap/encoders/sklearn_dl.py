"""scikit-learn's ``DictionaryLearning`` as a baseline (the optional extra ``sparsegap[sklearn]``).

One sklearn model per replica, ``random_state`` = seed + i (a persistent ``RandomState``), fitted by
coordinate descent with non-negative codes (``fit_algorithm='cd', positive_code=True,
positive_dict=False``) on the whole training set. Training goes through the ``Encoder.train_step``
hook: each step runs ``encoder.iterations_per_step`` of sklearn's alternating iterations
(``max_iter``), warm-started from the previous step's dictionary and codes (``dict_init``,
``code_init``), starting from the decoder's per-replica Gaussian initialisation; ``steps=300``
is therefore sklearn's ``max_iter=300`` without its early stop. After each step the dictionary is
copied into the decoder with unit-norm atoms (codes rescaled to match). Test codes: non-negative
LARS-lasso (``sparse_encode(algorithm='lasso_lars', positive=True)``, sklearn's ``transform``),
weight ``encoder.transform_alpha`` (null = ``encoder.alpha``).

FLOPs are estimates (sklearn's coordinate descent and LARS stop data-dependently): see the
``*_flops`` methods.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparsegap.config import EncoderConfig, ranged
from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.extras import require
from sparsegap.flops import Flops, renormalise_columns

# Coordinate-descent sweeps per sparse-coding pass assumed by the FLOP estimate.
CD_SWEEPS = 10


def _sklearn():
    require(SklearnDL.extra, "encoder=sklearn_dl")
    import sklearn.decomposition
    from sklearn.exceptions import ConvergenceWarning

    return sklearn.decomposition, ConvergenceWarning


@dataclass
class SklearnDLConfig(EncoderConfig):
    """scikit-learn's DictionaryLearning (coordinate descent, non-negative codes), one model per
    replica (random_state = seed + i); each training step runs ``iterations_per_step`` of its
    alternating iterations warm-started from the previous step. Test codes: non-negative
    LARS-lasso (sklearn's transform). Needs ``pip install -e '.[sklearn]'``."""

    name: str = "sklearn_dl"
    alpha: float = ranged(0.05, gt=0)  # sklearn's L1 weight: ½||x − D·s||² + alpha·|s|₁ per sample
    # LARS-lasso weight at test time; null = alpha
    transform_alpha: float | None = ranged(None, gt=0)
    iterations_per_step: int = ranged(1, ge=1)  # sklearn max_iter per training step


@register_encoder
class SklearnDL(Encoder):
    name = "sklearn_dl"
    config = SklearnDLConfig
    label = "scikit-learn DictionaryLearning"
    kind = "iterative"
    scenarios = ("unknown",)
    per_sample = True
    extra = "sklearn"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        _sklearn()  # fail at build time, before any training, when scikit-learn is missing
        samples = kw["train_samples"]
        self.register_buffer("codes", torch.zeros(self.replicas, self.latents, samples))
        self.states = [np.random.RandomState(g.initial_seed()) for g in kw["generators"]]
        alpha = cfg.transform_alpha
        self.transform_alpha = cfg.alpha if alpha is None else alpha

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The training codes of the last step (x is the training set, as for sparse coding)."""
        return self.codes if index is None else self.codes[:, :, index]

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        decomposition, _ = _sklearn()
        data = x.T.double().cpu().numpy()
        codes = []
        for r in range(atoms.shape[0]):
            dictionary = atoms[r].T.double().cpu().numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = decomposition.sparse_encode(
                    data,
                    dictionary,
                    algorithm="lasso_lars",
                    alpha=self.transform_alpha,
                    positive=True,
                )
            codes.append(torch.from_numpy(code.T.copy()))
        return torch.stack(codes).to(atoms)

    @torch.no_grad()
    def train_step(self, x: Tensor, decoder) -> bool:
        if decoder is None or not decoder.learned:
            raise ValueError("sklearn_dl needs a learned decoder (scenario=unknown)")
        decomposition, convergence = _sklearn()
        data = x.T.double().cpu().numpy()
        atoms = decoder.weight.detach()
        for r in range(self.replicas):
            model = decomposition.DictionaryLearning(
                n_components=self.latents,
                alpha=self.cfg.alpha,
                max_iter=self.cfg.iterations_per_step,
                fit_algorithm="cd",
                positive_code=True,
                positive_dict=False,
                dict_init=atoms[r].T.double().cpu().numpy(),
                code_init=self.codes[r].T.double().cpu().numpy(),
                random_state=self.states[r],
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", convergence)
                code = model.fit_transform(data)  # (B, L), the fit's last codes
            dictionary = torch.from_numpy(model.components_.T.copy()).to(atoms)  # (M, L)
            norms = dictionary.norm(dim=0).clamp_min(1e-12)
            decoder.weight[r].copy_(dictionary / norms)
            self.codes[r].copy_(torch.from_numpy(code.T.copy()).to(atoms) * norms[:, None])
        return True

    def train_step_flops(self, samples: int) -> Flops:
        """Estimate per sklearn iteration: Gram DᵀD and Dᵀx, ``CD_SWEEPS`` coordinate-descent
        sweeps over L coordinates (2L per coordinate and sample, Gram form), then sklearn's
        block-coordinate dictionary update (residual X − D·S once, then per atom a rank-one
        update, a product with the codes and a normalisation: ~6·M·B per atom)."""
        m, n, b = self.dim, self.latents, samples
        code = Flops(matmul=2 * n * n * m + 2 * m * n * b, elementwise=CD_SWEEPS * 2 * n * n * b)
        update = Flops(matmul=2 * m * n * b, elementwise=6 * m * n * b)
        step = (code + update) * self.cfg.iterations_per_step
        return step + renormalise_columns(m, n) + Flops(elementwise=n * b)

    def forward_flops(self, samples: int) -> Flops:
        return Flops()

    def backward_flops(self, samples: int) -> Flops:
        return Flops()

    def infer_flops(self, samples: int) -> Flops:
        """Estimate: Gram and Dᵀx, then up to k = min(M, L) LARS steps, each a correlation
        update (2L) and a Cholesky update of the active set (k²) per sample."""
        m, n, b = self.dim, self.latents, samples
        k = min(m, n)
        return Flops(matmul=2 * n * n * m + 2 * m * n * b, elementwise=k * (2 * n + k * k) * b)
