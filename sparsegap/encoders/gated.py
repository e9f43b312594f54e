"""Gated SAE (Rajamanoharan et al. 2024a): a gate path decides which latents are active and a
magnitude path how large they are; both share the weights W, the magnitude path rescaling each
latent's row by exp(r_mag):

    π_gate = W·x + b_gate,    π_mag = exp(r_mag) ⊙ (W·x) + b_mag,
    codes  = H(π_gate) ⊙ ReLU(π_mag).

H passes no gradient, so the gate is trained by the paper's two extra terms (``auxiliary_losses``),
which replace the scenario's L1 on the codes (logged, not added):

- ``l1_gate``: ``l1_coeff``·mean(ReLU(π_gate)) — the L1 penalty on the gate pre-activations
  (atoms are unit norm, so the paper's decoder-norm weighting is 1);
- ``aux_mse``: mean((D̄·ReLU(π_gate) − x)²) through a frozen copy D̄ of the decoder (gradients
  reach the gate, not the dictionary).

Biases (``encoder.bias``) default to true here: without b_gate the gate is H(W·x) and the
encoder collapses to a rescaled ReLU SAE. They start at zero and r_mag at zero, as in the paper.
In ``known_codes`` (no decoder) neither term exists and only the magnitude path trains W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sparsegap.config import EncoderConfig
from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.flops import Flops, linear_backward, linear_forward, reconstruction_loss

if TYPE_CHECKING:
    from sparsegap.decoder import Decoder


@dataclass
class GatedConfig(EncoderConfig):
    """Gated SAE (Rajamanoharan et al. 2024a): codes = H(W·x + b_gate)·ReLU(exp(r_mag)·W·x +
    b_mag); L1 on ReLU(gate) and an auxiliary reconstruction through a frozen decoder copy."""

    name: str = "gated"
    bias: bool = True  # b_gate and b_mag; without them the gate cannot threshold


@register_encoder
class Gated(Encoder):
    name = "gated"
    config = GatedConfig
    label = "Gated SAE"
    l1_penalty = False

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.l1_coeff = kw["l1_coeff"]
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=False)
        shape = (self.replicas, self.latents, 1)
        self.r_mag = nn.Parameter(torch.zeros(shape))
        self.b_gate = nn.Parameter(torch.zeros(shape)) if cfg.bias else None
        self.b_mag = nn.Parameter(torch.zeros(shape)) if cfg.bias else None

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shared = self.linear(x)
        gate = shared + self.b_gate if self.b_gate is not None else shared
        magnitude = shared * self.r_mag.exp()
        if self.b_mag is not None:
            magnitude = magnitude + self.b_mag
        return gate, magnitude

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        gate, magnitude = self._paths(x)
        return self._keep(magnitude.relu() * (gate > 0), gate)

    def auxiliary_losses(self, x: Tensor, codes: Tensor, atoms: Tensor | None) -> dict[str, Tensor]:
        if atoms is None:
            return {}
        # π_gate of the forward pass that produced these codes (W·x is not recomputed in
        # training); recomputed when the codes came from elsewhere.
        gate = self._kept_for(codes, lambda: self._paths(x)[0])
        active = gate.relu()
        residual = torch.baddbmm(
            x.expand(atoms.shape[0], *x.shape), atoms.detach(), active, beta=-1
        )
        return {
            "l1_gate": self.l1_coeff * active.mean(dim=(1, 2)),
            "aux_mse": residual.square().mean(dim=(1, 2)),
        }

    def forward_flops(self, samples: int) -> Flops:
        # one shared linear; gate bias, exp(r_mag), rescale, magnitude bias, ReLU, compare,
        # multiply.
        lb = self.latents * samples
        return linear_forward(self.dim, self.latents, samples) + Flops(
            elementwise=self.latents + (4 + 2 * self.cfg.bias) * lb
        )

    def backward_flops(self, samples: int) -> Flops:
        # weight gradient of the shared linear (gradients of both paths summed first); masks,
        # rescale and its r_mag gradient, bias gradients.
        lb = self.latents * samples
        return linear_backward(self.dim, self.latents, samples, input_grad=False) + Flops(
            elementwise=(6 + 2 * self.cfg.bias) * lb
        )

    def auxiliary_flops(self, samples: int, decoder: Decoder | None) -> Flops:
        if decoder is None:
            return Flops()
        # ReLU(π_gate) and its L1 (forward, backward), plus a reconstruction through the frozen
        # decoder: the same count as the main loss without a dictionary gradient.
        forward, backward = reconstruction_loss(self.latents, self.dim, samples, False)
        return forward + backward + Flops(elementwise=4 * self.latents * samples)
