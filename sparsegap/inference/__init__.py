"""Iterative sparse inference: codes for a batch of X given a dictionary.

Each algorithm is one module holding an ``Inference`` subclass registered by name; the encoders
that infer codes at test time (sparse coding, SAE+ITO) select one with ``encoder.inference.name``.
"""

# Each algorithm module registers itself on import.
from sparsegap.inference import (  # noqa: F401
    adam_log,
    gradient_pursuit,
    ista,
    matching_pursuit,
    refit,
    topk,
)
from sparsegap.inference.base import INFERENCE, Inference, build_inference, register_inference

__all__ = ["INFERENCE", "Inference", "build_inference", "register_inference"]
