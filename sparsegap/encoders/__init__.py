"""Encoders: one file each, registered by the name used in ``encoder=<name>``."""

from sparsegap.encoders import (  # noqa: F401  (register)
    batch_topk,
    dictionary_learning,
    gated,
    jumprelu,
    lista,
    mlp,
    sae,
    sae_ito,
    sklearn_dl,
    sparse_coding,
    topk,
)
from sparsegap.encoders.base import ENCODERS, Encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "register_encoder"]
