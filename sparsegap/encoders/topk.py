"""TopK SAE (Gao et al. 2024): codes = TopK_k(ReLU(W·x [+ b])) per sample.

Sparsity is enforced by the activation itself, so the scenario's L1 term is logged but not
added to the loss. ``encoder.k`` defaults to ``data.K`` (resolved by ``fill_defaults``).

AuxK (``encoder.aux_k`` > 0, Gao et al. 2024 §A.2): a latent is dead when it has not fired in
the last ``encoder.aux_dead_tokens`` training tokens. The dead latents' ``aux_k`` largest
activations per sample reconstruct the residual x − D·codes of the main reconstruction (held
fixed). The auxiliary term ``loss/auxk`` (0 while none is dead) is ``aux_coeff`` × that
reconstruction's MSE over the residual's variance, times x's variance: Gao et al. weigh it
against the normalised MSE, the loss here is the plain MSE. Its gradient reaches only dead
latents' encoder rows and atoms, pulling latents that stopped firing towards what the live ones
miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import EncoderConfig, latents_of, ranged
from sparsegap.encoders.base import Encoder, check_budget, register_encoder
from sparsegap.encoders.layers import ReplicaLinear
from sparsegap.errors import ConfigError, need
from sparsegap.flops import Flops, linear_backward, linear_forward, reconstruction_loss, relu

if TYPE_CHECKING:
    from sparsegap.decoder import Decoder


def resolved_k(cfg) -> int:
    if cfg.k is None:
        raise ValueError(
            f"encoder.k is null for encoder={cfg.name}: resolve it first (sparsegap.config"
            ".fill_defaults sets it to data.K) or set encoder.k"
        )
    return int(cfg.k)


def _variance(x: Tensor) -> Tensor:
    """Mean squared deviation from the batch mean of columns x (..., M, B): the MSE of
    predicting the mean sample, per leading index."""
    return (x - x.mean(dim=-1, keepdim=True)).square().mean(dim=(-2, -1))


@dataclass
class TopKConfig(EncoderConfig):
    """TopK SAE (Gao et al. 2024): codes = TopK_k(ReLU(W·x [+ b])) per sample; no L1 penalty."""

    name: str = "topk"
    k: int | None = ranged(None, ge=1)  # active latents per sample; null = data.K
    # AuxK (Gao et al. 2024, §A.2): the dead latents' aux_k largest activations reconstruct the
    # residual x − D·codes; aux_coeff × its MSE over the residual's variance, × x's variance, is
    # added to the loss (sparsegap/encoders/topk.py). Revives latents that stopped firing.
    # 0 = off, as in the paper.
    # dead latents kept per sample (Gao et al.: d/2, e.g. 384 for GPT-2 small)
    aux_k: int = ranged(0, ge=0)
    aux_coeff: float = ranged(0.03125, ge=0)  # weight α of the AuxK term (Gao et al.: 1/32)
    # dead: not fired in this many training tokens (samples)
    aux_dead_tokens: int = ranged(10_000_000, ge=1)


@register_encoder
class TopK(Encoder):
    name = "topk"
    config = TopKConfig
    label = "TopK SAE"

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        e = cfg.encoder
        check_budget(cfg, "encoder.k", e.k)
        latents = latents_of(cfg)
        fits = e.aux_k >= 0 and (latents is None or e.aux_k <= latents)
        top = "" if latents is None else f" ({latents})"
        need(
            fits,
            "encoder.aux_k",
            e.aux_k,
            f"must be between 0 (off) and the number of latents{top}",
        )
        if e.aux_k and cfg.scenario.name == "known_codes":
            raise ConfigError(
                f"encoder.aux_k={e.aux_k} is invalid with scenario=known_codes: AuxK reconstructs"
                " the residual through the decoder, and known_codes has none; set encoder.aux_k=0"
            )

    @classmethod
    def resolve(cls, cfg: DictConfig) -> None:
        if cfg.encoder.k is None:
            cfg.encoder.k = cfg.data.K

    l1_penalty = False

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.k = resolved_k(cfg)
        self.linear = ReplicaLinear(self.dim, self.latents, kw["generators"], bias=cfg.bias)
        self.aux_k = int(cfg.aux_k)
        if self.aux_k:
            self.aux_coeff = float(cfg.aux_coeff)
            self.aux_dead_tokens = int(cfg.aux_dead_tokens)
            # Training tokens since each latent last fired (R, L): a buffer, so a checkpoint
            # keeps it and a resumed run treats the same latents as dead.
            zeros = torch.zeros(self.replicas, self.latents, dtype=torch.long)
            self.register_buffer("tokens_since_fired", zeros)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        pre = self.linear(x).relu()
        values, indices = pre.topk(self.k, dim=1, sorted=False)
        # Out-of-place scatter: autograd routes the gradient to the kept entries only.
        return self._track(pre, pre.new_zeros(pre.shape).scatter(1, indices, values))

    def _track(self, pre: Tensor, codes: Tensor) -> Tensor:
        """With AuxK, in training steps (gradients enabled; evaluation runs without): count the
        tokens since each latent fired and keep ``pre`` for ``auxiliary_losses``."""
        if not (self.aux_k and torch.is_grad_enabled()):
            return codes
        with torch.no_grad():
            fired = (codes > 0).any(dim=2)
            self.tokens_since_fired.add_(codes.shape[2]).masked_fill_(fired, 0)
        return self._keep(codes, pre)

    def _dead(self) -> Tensor:
        """(R, L): the latents AuxK counts dead (not fired in its window)."""
        return self.tokens_since_fired >= self.aux_dead_tokens

    def auxiliary_losses(self, x: Tensor, codes: Tensor, atoms: Tensor | None) -> dict[str, Tensor]:
        if not self.aux_k or atoms is None:
            return {}
        # ReLU(W·x) of the forward pass that produced these codes, recomputed for other codes.
        pre = self._kept_for(codes, lambda: self.linear(x).relu())
        dead = self._dead()
        candidates = pre * dead.unsqueeze(2)  # live latents' activations are 0: never above
        values, indices = candidates.topk(self.aux_k, dim=1, sorted=False)
        aux_codes = candidates.new_zeros(candidates.shape).scatter(1, indices, values)
        with torch.no_grad():  # the main reconstruction's residual is the fixed target
            residual = (x - torch.bmm(atoms, codes)).float()
            # Gao et al. weigh α·NMSE(residual) against the NMSE of x; the loss here is the
            # plain MSE of x, so the term is scaled by x's variance to keep their trade-off.
            scale = _variance(x.float()) / _variance(residual).clamp_min(torch.finfo().tiny)
        error = torch.bmm(atoms, aux_codes).float() - residual
        aux = self.aux_coeff * scale * error.square().mean(dim=(-2, -1))
        return {"auxk": torch.where(dead.any(dim=1), aux, 0.0)}

    def state_metrics(self) -> dict[str, Tensor]:
        if not self.aux_k:
            return {}
        # The latents AuxK trains now: the count that tells whether its window suits the data.
        return {"dead_latents/auxk": self._dead().sum(dim=1)}

    def auxiliary_flops(self, samples: int, decoder: Decoder | None) -> Flops:
        if not self.aux_k or decoder is None:
            return Flops()
        # The residual's decode (no gradient), masking, selection and scatter of the dead
        # latents, then a reconstruction loss like the main one, plus x's and the residual's
        # variances.
        forward, backward = reconstruction_loss(self.latents, self.dim, samples, decoder.learned)
        residual = linear_forward(self.latents, self.dim, samples) + Flops(
            elementwise=7 * self.dim * samples + 2 * self.latents * samples + self.aux_k * samples
        )
        return residual + forward + backward

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
