"""Iterative sparse inference: codes for a batch of X given a dictionary.

Each algorithm is one module of this package holding an ``Inference`` subclass registered by
name (every module here is imported, so a new algorithm is one file); the encoders that infer
codes at test time (sparse coding, SAE+ITO, dictionary learning) select one with
``encoder.inference.name``.
"""

import importlib
import pkgutil

from sparsegap.inference.base import INFERENCE, Inference, build_inference, register_inference

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["INFERENCE", "Inference", "build_inference", "register_inference"]
