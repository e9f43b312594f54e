"""Encoders: one file each, registered by the name used in ``encoder=<name>``."""

from sparsegap.encoders import (  # noqa: F401  (register)
    batch_topk,
    gated,
    jumprelu,
    lista,
    mlp,
    sae,
    sae_ito,
    sparse_coding,
    topk,
)
from sparsegap.encoders.base import ENCODERS, Encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "register_encoder"]
