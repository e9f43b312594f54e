"""Logit effects of a feature: W_Uᵀ·d, the direct effect of its decoder direction d on the
next-token logits (paper §5), summarised by the most promoted and most suppressed tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LogitEffects:
    top: list[tuple[str, float]]  # most promoted tokens, largest effect first
    bottom: list[tuple[str, float]]  # most suppressed tokens, most negative first


@torch.no_grad()
def logit_effects(
    directions: Tensor, unembed: Tensor, vocab: list[str], k: int
) -> list[LogitEffects]:
    """Per feature, the k most promoted and suppressed tokens.

    directions: (d_model, F) decoder directions of the F features; unembed: W_U (d_model, V);
    vocab: the display string of each token id.
    """
    if k == 0:
        return [LogitEffects([], []) for _ in range(directions.shape[1])]
    effects = directions.T.float() @ unembed.float().to(directions.device)  # (F, V)
    k = min(k, effects.shape[1])
    top = effects.topk(k, dim=1)
    bottom = (-effects).topk(k, dim=1)
    out = []
    for f in range(effects.shape[0]):
        out.append(
            LogitEffects(
                [(vocab[i], float(v)) for i, v in zip(top.indices[f], top.values[f], strict=True)],
                [
                    (vocab[i], -float(v))
                    for i, v in zip(bottom.indices[f], bottom.values[f], strict=True)
                ],
            )
        )
    return out
