"""Encoders: one file each, registered by the name used in ``encoder=<name>``."""

from sparsegap.encoders import mlp, sae, sae_ito, sparse_coding  # noqa: F401  (register)
from sparsegap.encoders.base import ENCODERS, Encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "register_encoder"]
