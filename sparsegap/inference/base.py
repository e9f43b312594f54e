"""The interface every inference algorithm implements, and the registry.

Each algorithm declares itself once, as class attributes: its registry name (the value of
``encoder.inference.name``), its display name (``label``), whether it needs an atom budget
(``needs_budget``: ``encoder.inference.k``), its own value checks (``check``) and its FLOPs. All
algorithms share one config schema, ``InferenceConfig``, so any of them can be picked by
overriding the name alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import InferenceConfig
from sparsegap.flops import Flops

INFERENCE: dict[str, type[Inference]] = {}


class Inference(ABC):
    """Solve min_S ||D·S - X||^2 / (M·B) + l1 · mean(S) over non-negative codes S.

    Shapes: x (M, B) shared by all replicas, atoms (R, M, L) one dictionary per replica,
    init (R, L, B) non-negative codes to warm-start from, or None for the algorithm's own start.
    Returns codes (R, L, B).
    """

    name: ClassVar[str]  # the value of encoder.inference.name
    label: ClassVar[str]  # display name in reports, e.g. "FISTA"
    # Whether it keeps a fixed number of atoms per code, encoder.inference.k (null = data.K).
    needs_budget: ClassVar[bool] = False

    @classmethod
    def check(cls, cfg: DictConfig, key: str) -> None:
        """The algorithm's own value checks on its config ``cfg`` (at ``key``), raising
        ``ConfigError``; the common fields are checked by the encoder. None by default."""
        return None

    def __init__(self, cfg: InferenceConfig, l1_coeff: float) -> None:
        self.cfg = cfg
        self.iterations = cfg.iterations
        self.l1_coeff = cfg.l1_coeff if cfg.l1_coeff is not None else l1_coeff
        # Whether ``iterate`` on CUDA replays captured graphs (set by model.build from
        # ``device.graph``).
        self.captured = False

    def iterate(self, iteration: Callable[[], None], device: torch.device) -> None:
        """Call ``iteration`` ``self.iterations`` times: on CUDA with ``captured``, as replays
        of a captured CUDA graph (sparsegap/accel/graph.py: ``iteration`` works in place,
        with no host synchronisation), else in a plain loop."""
        if self.captured and device.type == "cuda":
            from sparsegap.accel.graph import repeat  # CUDA only: off the CPU path

            repeat(iteration, self.iterations)
            return
        for _ in range(self.iterations):
            iteration()

    @abstractmethod
    def __call__(self, x: Tensor, atoms: Tensor, init: Tensor | None = None) -> Tensor: ...

    @abstractmethod
    def iteration_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """FLOPs of one iteration over ``samples`` samples, per replica."""

    def setup_flops(self, samples: int, latents: int, dim: int) -> Flops:
        """FLOPs spent once per call before iterating (e.g. a Gram matrix), per replica."""
        return Flops()

    def flops(self, samples: int, latents: int, dim: int) -> Flops:
        """Total FLOPs of one call with the configured iteration budget, per replica."""
        setup = self.setup_flops(samples, latents, dim)
        return setup + self.iteration_flops(samples, latents, dim) * self.iterations


def register_inference(cls: type[Inference]) -> type[Inference]:
    """Class decorator: add an inference algorithm to the registry."""
    for attribute in ("name", "label"):
        if not hasattr(cls, attribute):
            raise TypeError(f"inference {cls.__name__} declares no {attribute!r}")
    INFERENCE[cls.name] = cls
    return cls


def build_inference(cfg: InferenceConfig, l1_coeff: float) -> Inference:
    return INFERENCE[cfg.name](cfg, l1_coeff)
