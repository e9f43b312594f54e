"""SAE + inference-time optimisation: trained exactly like the SAE; at test time its codes are
refined by ``encoder.inference`` against its decoder, starting from the SAE's own codes
(``init=sae``) or from scratch (``init=scratch``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import EncoderConfig, HandStepConfig, InferenceConfig
from sparsegap.encoders.base import InferenceEncoder, register_encoder
from sparsegap.encoders.sae import SAE
from sparsegap.errors import choice
from sparsegap.flops import Flops
from sparsegap.inference import build_inference

ITO_INITS = ("sae", "scratch")  # encoder.init: where test-time inference starts


@dataclass
class SAEITOConfig(EncoderConfig, HandStepConfig):
    """SAE whose test codes are refined by inference-time optimisation against its decoder."""

    name: str = "sae_ito"
    init: str = "sae"  # start inference from the SAE's codes (sae) or from exp(init_log) (scratch)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # the test-time inference


@register_encoder
class SAEITO(InferenceEncoder, SAE):
    name = "sae_ito"
    config = SAEITOConfig
    label = "SAE + ITO"
    kind = "iterative"
    scenarios = ("known_dictionary", "unknown")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        choice("encoder.init", cfg.encoder.init, ITO_INITS)
        super().check(cfg)

    @classmethod
    def describe(cls, encoder: Mapping[str, Any]) -> str:
        inference = cls.inference_label(encoder)
        start = ", from scratch" if encoder["init"] == "scratch" else ""
        return f"SAE + ITO ({inference}{start})"

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
