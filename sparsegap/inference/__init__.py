"""Iterative sparse inference: codes for a batch of X given a dictionary.

Each algorithm is one module holding an ``Inference`` subclass registered by name; the encoders
that infer codes at test time (sparse coding, SAE+ITO) select one with ``encoder.inference.name``.
"""

from sparsegap.inference.base import INFERENCE, Inference, build_inference, register_inference
from sparsegap.inference import adam_log  # noqa: F401  (registers itself)
from sparsegap.inference import gradient_pursuit, ista, matching_pursuit  # noqa: F401  (register)

__all__ = ["INFERENCE", "Inference", "build_inference", "register_inference"]
