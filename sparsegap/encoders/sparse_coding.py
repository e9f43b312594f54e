"""Sparse coding: one free non-negative code vector per training sample, S = exp(log S),
trained jointly with the dictionary by gradient descent (the authors' method). Codes for unseen
samples are inferred by ``encoder.inference`` against the learned dictionary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparsegap.accel.reconstruction import reconstruction_backward
from sparsegap.config import EncoderConfig, HandStepConfig, InferenceConfig, ranged
from sparsegap.encoders.base import (
    Encoder,
    HandStep,
    InferenceEncoder,
    register_encoder,
)
from sparsegap.flops import Flops
from sparsegap.inference import build_inference


@dataclass
class SparseCodingConfig(EncoderConfig, HandStepConfig):
    """Free non-negative codes per training sample (S = exp(log S)) learned jointly with the
    dictionary; codes for test samples are inferred by iterative optimisation."""

    name: str = "sparse_coding"
    init_log: float = ranged(-10.0)  # training log-codes start here (the authors' value)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # test-time inference


@register_encoder
class SparseCoding(InferenceEncoder, Encoder):
    name = "sparse_coding"
    config = SparseCodingConfig
    label = "sparse coding"
    kind = "iterative"
    scenarios = ("unknown",)
    per_sample = True

    @classmethod
    def describe(cls, encoder: Mapping[str, Any]) -> str:
        return f"sparse coding ({cls.inference_label(encoder)})"

    has_fast_step = True
    capturable = True

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        shape = (self.replicas, self.latents, kw["train_samples"])
        self.log_codes = nn.Parameter(torch.full(shape, float(cfg.init_log)))
        self.inference = build_inference(cfg.inference, kw["l1_coeff"])

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        log_codes = self.log_codes if index is None else self.log_codes[:, :, index]
        return log_codes.exp()

    @torch.no_grad()
    def fast_step(
        self,
        x: Tensor,
        atoms: Tensor,
        l1_coeff: float | Tensor,
        atoms_grad: bool,
        losses: bool = True,
    ) -> HandStep:
        # exp in the parameters' dtype, the GEMMs in x's (bf16 under autocast), as autograd does.
        codes = self.log_codes.exp()
        low = codes.to(x.dtype)
        mse, l1, grad, grad_atoms = reconstruction_backward(
            low, atoms, x, l1_coeff, atoms_grad, losses
        )
        # Chain rule through S = exp(log S): d/dlog S = S ⊙ dL/dS.
        self.log_codes.grad = grad.to(codes.dtype).mul_(codes)
        return mse, l1, low, grad_atoms

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        return self.inference(x, atoms)

    def forward_flops(self, samples: int) -> Flops:
        return Flops(elementwise=self.latents * samples)  # exp

    def backward_flops(self, samples: int) -> Flops:
        return Flops(elementwise=self.latents * samples)  # chain rule through exp

    def infer_flops(self, samples: int) -> Flops:
        return self.inference.flops(samples, self.latents, self.dim)
