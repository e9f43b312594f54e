"""Sparse coding: one free non-negative code vector per training sample, S = exp(log S),
trained jointly with the dictionary by gradient descent (the authors' method). Codes for unseen
samples are inferred by ``encoder.inference`` against the learned dictionary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsegap.encoders.base import Encoder, register_encoder
from sparsegap.flops import Flops
from sparsegap.inference import build_inference


@register_encoder
class SparseCoding(Encoder):
    name = "sparse_coding"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        shape = (self.replicas, self.latents, kw["train_samples"])
        self.log_codes = nn.Parameter(torch.full(shape, float(cfg.init_log)))
        self.inference = build_inference(cfg.inference, kw["l1_coeff"])

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        log_codes = self.log_codes if index is None else self.log_codes[:, :, index]
        return log_codes.exp()

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        return self.inference(x, atoms)

    def forward_flops(self, samples: int) -> Flops:
        return Flops(elementwise=self.latents * samples)  # exp

    def backward_flops(self, samples: int) -> Flops:
        return Flops(elementwise=self.latents * samples)  # chain rule through exp

    def infer_flops(self, samples: int) -> Flops:
        return self.inference.flops(samples, self.latents, self.dim)
