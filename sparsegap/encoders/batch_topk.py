"""BatchTopK SAE (Bussmann et al. 2024): in training, keep the k·B largest ReLU(W·x [+ b])
activations of the whole batch (per replica), so the number of active latents varies per sample
and averages k. At inference (``infer``) a sample is encoded on its own by a threshold θ:
codes = a·[a > θ], with θ the running average of the smallest kept activation in training
(per replica; a registered buffer, so it is saved and moved with the model).

The running average is the cumulative mean of the first 1/momentum training steps and an
exponential moving average with ``encoder.threshold_momentum`` after that, so early values from
the untrained encoder are forgotten. The scenario's L1 term is logged but not added to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsegap.config import ranged
from sparsegap.encoders.base import register_encoder
from sparsegap.encoders.topk import TopK, TopKConfig
from sparsegap.flops import Flops, linear_forward, relu


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE (Bussmann et al. 2024): training keeps the k·B largest ReLU(W·x [+ b]) of
    the batch; inference thresholds each sample at the running average of the smallest kept
    activation. No L1 penalty. AuxK as for TopK."""

    name: str = "batch_topk"
    k: int | None = ranged(None, ge=1)  # mean active latents per sample; null = data.K
    # EMA weight of the threshold estimate (cumulative mean first)
    threshold_momentum: float = ranged(0.01, gt=0, le=1)


@register_encoder
class BatchTopK(TopK):
    """Same parameters, training FLOPs, L1 handling and AuxK as TopK; only the selection
    differs."""

    name = "batch_topk"
    config = BatchTopKConfig
    label = "BatchTopK SAE"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.momentum = float(cfg.threshold_momentum)
        self.register_buffer("threshold", torch.zeros(self.replicas, 1, 1))
        self.register_buffer("threshold_updates", torch.zeros(self.replicas, 1, 1))

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training-time codes: the top k·B activations of the batch, per replica. Updates the
        threshold estimate when gradients are enabled (training steps, not evaluation)."""
        pre = self.linear(x).relu()
        replicas, latents, samples = pre.shape
        flat = pre.reshape(replicas, latents * samples)
        values, indices = flat.topk(self.k * samples, dim=1, sorted=False)
        if torch.is_grad_enabled():
            self._update_threshold(values.detach())
        return self._track(pre, flat.new_zeros(flat.shape).scatter(1, indices, values).view_as(pre))

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        # Smallest kept activation that is positive (kept zeros only occur when fewer than k·B
        # activations are positive; they carry no information about the threshold).
        positive = torch.where(kept > 0, kept, torch.full_like(kept, float("inf")))
        smallest = positive.amin(dim=1).view(-1, 1, 1)
        smallest = torch.where(torch.isfinite(smallest), smallest, self.threshold)
        self.threshold_updates.add_(1)
        weight = torch.clamp(1 / self.threshold_updates, min=self.momentum)
        self.threshold.lerp_(smallest, weight)

    def state_metrics(self) -> dict[str, Tensor]:
        return {**super().state_metrics(), "batch_topk/threshold": self.threshold.flatten()}

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        pre = self.linear(x).relu()
        return pre * (pre > self.threshold)

    def infer_flops(self, samples: int) -> Flops:
        # linear, ReLU, compare with θ, multiply by the mask.
        return (
            linear_forward(self.dim, self.latents, samples, self.cfg.bias)
            + relu(self.latents, samples)
            + Flops(elementwise=2 * self.latents * samples)
        )
