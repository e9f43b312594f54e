"""What is known, what is learned, and the training loss (paper §3.5).

- ``known_codes``: the true codes are given; the encoder regresses them (no decoder).
- ``known_dictionary``: the decoder is frozen at the true dictionary; the encoder learns to infer.
- ``unknown``: codes and dictionary are both learned from X alone.

Losses are computed per replica and summed over replicas, so each replica's gradient is exactly
the gradient it would get if trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from sparsegap.accel.reconstruction import reconstruction


@dataclass(frozen=True)
class Losses:
    """Per-replica loss terms (each of shape (R,)); ``total`` is what is minimised.

    ``auxiliary`` holds the encoder's own weighted terms (``Encoder.auxiliary_losses``), already
    included in ``total`` and logged as ``loss/<name>``.
    """

    total: Tensor
    mse: Tensor | None = None
    l1: Tensor | None = None
    cosine: Tensor | None = None
    auxiliary: dict[str, Tensor] = field(default_factory=dict)

    def named(self) -> dict[str, Tensor]:
        names = {"loss/total": self.total, "loss/mse": self.mse, "loss/l1": self.l1}
        names["loss/cosine"] = self.cosine
        for name, value in self.auxiliary.items():
            if f"loss/{name}" in names:
                raise ValueError(f"auxiliary loss {name!r} shadows a scenario loss term")
            names[f"loss/{name}"] = value
        return {k: v for k, v in names.items() if v is not None}


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: int  # the paper's number of training steps (scenario.steps of scenario=<name>)
    why_not: str  # shown when an encoder that does not apply (Encoder.scenarios) is asked for
    decoder: str  # "none" | "fixed" (the true dictionary) | "learned"
    needs_matching_latents: bool = False

    def loss(
        self,
        codes: Tensor,
        x: Tensor,
        true_codes: Tensor,
        atoms: Tensor | None,
        l1_coeff: float,
        *,
        l1_penalty: bool = True,
        auxiliary: dict[str, Tensor] | None = None,
        importance: Tensor | None = None,
        cosine: str = "latent",
    ) -> Losses:
        """codes (R, L, B); x (M, B); true_codes (N, B); atoms: the decoder (R, M, L) or None.
        ``l1_penalty=False`` leaves the L1 term out of the total (it is still returned);
        ``auxiliary`` terms (R,) are added to the total. ``cosine`` (known codes): each cosine
        similarity runs over one latent's samples (``latent``) or one sample's latents
        (``sample``).

        ``importance`` (N,): feature importance weights w (``SyntheticData.importance``; None =
        unweighted, the paper's loss bit for bit). They weight the per-feature terms of the loss
        where latent i *is* true feature i, as a weighted mean Σ w_i·term_i / Σ w_i (so all-ones
        weights give the unweighted value up to rounding):

        - ``known_codes``: the cosine term of each code row (feature).
        - ``known_dictionary``: the L1 term of each latent, mean_b S_ib. The reconstruction error
          stays unweighted: Elhage et al. (2022) weight the error per feature because their
          toy model reconstructs the features themselves, but here the error lives in X-space,
          where the atoms superpose; splitting it per feature would need the true codes, which
          this scenario does not give the encoder.
        - ``unknown``: the learned latents match the features only up to an unknown permutation,
          so there is no per-feature term to weight; ``importance`` is ignored.
        """
        auxiliary = auxiliary or {}
        extra = sum(auxiliary.values()) if auxiliary else None
        if not self.needs_matching_latents:
            importance = None
        if self.decoder == "none":
            # Negative mean cosine similarity between true and predicted codes (the authors found
            # it more stable than MSE for this regression), per latent row or per sample column.
            per_sample = cosine == "sample"
            terms = F.cosine_similarity(codes, true_codes.unsqueeze(0), dim=1 if per_sample else 2)
            if importance is None or per_sample:
                similarity = terms.mean(dim=1)
            else:
                similarity = _weighted_mean(terms, importance)
            total = -similarity if extra is None else extra - similarity
            return Losses(total=total, cosine=similarity, auxiliary=auxiliary)
        assert atoms is not None
        mse, l1 = reconstruction(codes, atoms, x)
        if importance is not None:  # codes are non-negative: |S| = S (see accel.reconstruction)
            l1 = _weighted_mean(codes.mean(dim=2), importance)
        total = mse + l1_coeff * l1 if l1_penalty else mse
        if extra is not None:
            total = total + extra
        return Losses(total=total, mse=mse, l1=l1, auxiliary=auxiliary)


def _weighted_mean(terms: Tensor, weights: Tensor) -> Tensor:
    """Σ_i w_i·terms[:, i] / Σ_i w_i per replica: terms (R, N), weights (N,)."""
    return terms @ weights / weights.sum()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="known_codes",
            steps=20_000,
            why_not=(
                "with the true codes known the task is latent regression, which only an amortised"
                " encoder can learn; sparse coding and SAE+ITO optimise codes against a dictionary"
                " and have nothing to fit here (paper §3.5)."
            ),
            decoder="none",
            needs_matching_latents=True,
        ),
        Scenario(
            name="known_dictionary",
            steps=20_000,
            why_not=(
                "with the dictionary fixed, sparse coding reduces to SAE+ITO (inference against"
                " the known dictionary), so use encoder=sae_ito (paper §3.5)."
            ),
            decoder="fixed",
            needs_matching_latents=True,
        ),
        Scenario(
            name="unknown",
            steps=40_000,
            why_not="",
            decoder="learned",
        ),
    )
}
