"""What is known, what is learned, and the training loss (paper §3.5).

- ``known_codes``: the true codes are given; the encoder regresses them (no decoder).
- ``known_dictionary``: the decoder is frozen at the true dictionary; the encoder learns to infer.
- ``unknown``: codes and dictionary are both learned from X alone.

Losses are computed per replica and summed over replicas, so each replica's gradient is exactly
the gradient it would get if trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Losses:
    """Per-replica loss terms (each of shape (R,)); ``total`` is what is minimised."""

    total: Tensor
    mse: Tensor | None = None
    l1: Tensor | None = None
    cosine: Tensor | None = None

    def named(self) -> dict[str, Tensor]:
        names = {"loss/total": self.total, "loss/mse": self.mse, "loss/l1": self.l1}
        names["loss/cosine"] = self.cosine
        return {k: v for k, v in names.items() if v is not None}


@dataclass(frozen=True)
class Scenario:
    name: str
    encoders: tuple[str, ...]  # encoders this scenario applies to
    why_not: str  # shown when another encoder is asked for
    decoder: str  # "none" | "fixed" (the true dictionary) | "learned"
    needs_matching_latents: bool = False

    def loss(
        self, codes: Tensor, x: Tensor, true_codes: Tensor, decoded: Tensor | None, l1_coeff: float
    ) -> Losses:
        """codes (R, L, B); x (M, B); true_codes (N, B); decoded = D·codes (R, M, B) or None."""
        if self.decoder == "none":
            # Negative mean cosine similarity between each true and predicted code row over the
            # batch (the authors found it more stable than MSE for this regression).
            cosine = F.cosine_similarity(codes, true_codes.unsqueeze(0), dim=2).mean(dim=1)
            return Losses(total=-cosine, cosine=cosine)
        assert decoded is not None
        mse = (decoded - x).square().mean(dim=(1, 2))
        l1 = codes.abs().mean(dim=(1, 2))
        return Losses(total=mse + l1_coeff * l1, mse=mse, l1=l1)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="known_codes",
            encoders=("sae", "mlp"),
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
            encoders=("sae", "mlp", "sae_ito"),
            why_not=(
                "with the dictionary fixed, sparse coding reduces to SAE+ITO (inference against"
                " the known dictionary), so use encoder=sae_ito (paper §3.5)."
            ),
            decoder="fixed",
        ),
        Scenario(
            name="unknown",
            encoders=("sae", "mlp", "sparse_coding", "sae_ito"),
            why_not="",
            decoder="learned",
        ),
    )
}


def total_loss(losses: Losses) -> Tensor:
    return torch.sum(losses.total)
