"""TopK SAE (Gao et al. 2024): codes = TopK_k(ReLU(W·x [+ b])) per sample.

Sparsity is enforced by the activation itself, so the scenario's L1 term is logged but not
added to the loss. ``encoder.k`` defaults to ``data.K`` (resolved by ``fill_defaults``).
"""

from __future__ import annotations

from torch import Tensor

from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, relu


def resolved_k(cfg) -> int:
    if cfg.k is None:
        raise ValueError(
            f"encoder.k is null for encoder={cfg.name}: resolve it first (sparsegap.config"
            ".fill_defaults sets it to data.K) or set encoder.k"
        )
    return int(cfg.k)


@register_encoder
class TopK(Encoder):
    name = "topk"
    l1_penalty = False

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.k = resolved_k(cfg)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        pre = self.linear(x).relu()
        values, indices = pre.topk(self.k, dim=1, sorted=False)
        # Out-of-place scatter: autograd routes the gradient to the kept entries only.
        return pre.new_zeros(pre.shape).scatter(1, indices, values)

    def forward_flops(self, samples: int) -> Flops:
        # linear, ReLU, selection (about one comparison per pre-activation), scatter.
        return (
            linear_forward(self.dim, self.latents, samples, self.cfg.bias)
            + relu(self.latents, samples)
            + Flops(elementwise=self.latents * samples + self.k * samples)
        )

    def backward_flops(self, samples: int) -> Flops:
        return linear_backward(
            self.dim, self.latents, samples, input_grad=False, bias=self.cfg.bias
        ) + relu(self.latents, samples)
