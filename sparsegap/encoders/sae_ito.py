"""SAE + inference-time optimisation: trained exactly like the SAE; at test time its codes are
refined by ``encoder.inference`` against its decoder, starting from the SAE's own codes
(``init=sae``) or from scratch (``init=scratch``)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.encoders.base import register_encoder
from sparsegap.encoders.sae import SAE
from sparsegap.flops import Flops
from sparsegap.inference import build_inference


@register_encoder
class SAEITO(SAE):
    name = "sae_ito"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        self.inference = build_inference(cfg.inference, kw["l1_coeff"])

    def needs_training(self, decoder_learned: bool) -> bool:
        # From scratch against a fixed dictionary the SAE is never used: zero training FLOPs
        # (paper §3.5), and the loop skips its steps.
        return self.cfg.init == "sae" or decoder_learned

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        init = self.forward(x) if self.cfg.init == "sae" else None
        return self.inference(x, atoms, init)

    def infer_flops(self, samples: int) -> Flops:
        start = self.forward_flops(samples) if self.cfg.init == "sae" else Flops()
        return start + self.inference.flops(samples, self.latents, self.dim)
