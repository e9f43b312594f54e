"""Training steps and inference iterations as replays of captured CUDA graphs (``device.graph``).

At the paper's sizes a synthetic training step is a few dozen tiny kernels, so on a GPU its time
is the host's launch overhead, not arithmetic. Here the steps between two evaluations are
captured once as one CUDA graph (``torch.cuda.graph``) and replayed: one launch per block of
steps. What a step reads from the host is made static first: the batch is the full training set
(one tensor, the same every step); the learning rate and L1 coefficient are device tensors that
``DeviceScalars`` recomputes on the device from a step counter kept there (so each replayed step
takes its own warm-up values), and Adam's step counts are already on the device
(``sparsegap.optim``). The step itself is ``Step``'s own code (hand-written or autograd),
recorded as it runs. ``CapturedSteps`` plugs into the loop as "take n steps"
(``sparsegap.step.runner``).

Iterative inference (Adam on log-codes: the paper's ITO and sparse coding's test codes, ten
thousand iterations per evaluation) is captured likewise, per block of iterations within one call
(``repeat``, through ``Inference.iterate``).

Whether a run's steps are captured is decided with its other checks (``graph_enabled`` in
sparsegap/validate.py). tests/test_graph.py checks on a GPU that captured training and inference
take the uncaptured steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sparsegap.step import Step

# Eager steps on a side stream before the first capture, as torch requires (lazy initialisation,
# cuBLAS workspaces, the allocator); they are real training steps.
WARMUP_STEPS = 3


def plan(steps: int, block: int) -> list[int]:
    """The graph lengths that take ``steps`` steps: whole blocks of ``block``, then the rest."""
    whole, rest = divmod(steps, block)
    return [block] * whole + ([rest] if rest else [])


class DeviceScalars:
    """The learning rate and L1 coefficient of each step, on the device: step t (from 1) has
    ``lr·min(1, t/lr_warmup)`` and ``l1·min(1, t/l1_warmup)`` (no ramp where a warm-up is 0),
    the values ``Step`` computes on the host, computed here from a step counter kept on the
    device, in float64 as the host does, then stored as float32 tensors updated in place."""

    def __init__(
        self,
        lr: float,
        lr_warmup: int,
        l1_coeff: float,
        l1_warmup: int,
        done: int,
        device: torch.device,
    ) -> None:
        self.base = {"lr": (lr, lr_warmup), "l1": (l1_coeff, l1_warmup)}
        self.t = torch.full((), float(done), dtype=torch.float64, device=device)
        self.lr = torch.full((), lr, dtype=torch.float32, device=device)
        self.l1 = torch.full((), l1_coeff, dtype=torch.float32, device=device)

    def __call__(self) -> tuple[Tensor, Tensor]:
        """Advance to the next step; its (lr, l1_coeff), as the same two tensors every call."""
        self.t.add_(1)
        for out, (value, warmup) in zip((self.lr, self.l1), self.base.values(), strict=True):
            if warmup > 0:
                out.copy_((self.t / warmup).clamp_(max=1.0).mul_(value))
        return self.lr, self.l1


class CapturedSteps:
    """Take n steps of ``trainer`` as replays of CUDA graphs of at most ``block`` steps each,
    captured on first use of each length (the loop asks for the same lengths over and over:
    ``eval_every``, and the rest at the end). Steps on the host (counters of samples and Adam
    steps) advance by what the captured steps would have added, once per replay."""

    def __init__(
        self, trainer: Step, block: int, progress: Callable[[int], object] = lambda steps: None
    ) -> None:
        self.trainer, self.block, self.progress = trainer, block, progress
        trainer.device_scalars = DeviceScalars(
            trainer.lr, trainer.lr_warmup, trainer.l1_coeff, trainer.l1_warmup,
            trainer.optimiser.t, trainer.model.device,
        )  # fmt: skip
        # Each graph keeps its own memory pool: they are replayed in any order (sharing one is
        # safe only in the order of capture), and at these sizes a pool is small.
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[int, int]]] = {}
        self.warm = 0

    def __call__(self, steps: int) -> None:
        warmup = min(steps, WARMUP_STEPS - self.warm)
        if warmup > 0:
            self._warm_up(warmup)
        for length in plan(steps - warmup, self.block):
            if length not in self.graphs:
                self.graphs[length] = self._capture(length)
            graph, (samples, adam_steps) = self.graphs[length]
            graph.replay()
            self.trainer.samples += samples
            self.trainer.optimiser.t += adam_steps
            self.progress(length)

    def _warm_up(self, steps: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.trainer.run(steps)
        torch.cuda.current_stream().wait_stream(side)
        self.warm += steps
        self.progress(steps)

    def _capture(self, length: int) -> tuple[torch.cuda.CUDAGraph, tuple[int, int]]:
        """Record ``length`` steps (nothing runs); returns the graph and what one replay adds to
        the host's counters (recording advanced them, so they are put back)."""
        trainer = self.trainer
        before = (trainer.samples, trainer.optimiser.t)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            trainer.run(length)
        added = (trainer.samples - before[0], trainer.optimiser.t - before[1])
        trainer.samples, trainer.optimiser.t = before
        return graph, added


def split(times: int) -> tuple[int, int, int]:
    """How ``repeat`` takes ``times`` iterations: (eager, block, replays) with
    eager + block·replays = times. Blocks of about √times iterations keep the host's work (one
    captured block, the eager ones) near 2√times iterations' launches; the eager iterations are
    the warm-up plus what does not fill a block."""
    block = max(1, math.isqrt(times))
    replays = (times - WARMUP_STEPS) // block if times > WARMUP_STEPS else 0
    return times - block * replays, block, replays


def repeat(iteration: Callable[[], None], times: int) -> None:
    """Call ``iteration`` ``times`` times on the current CUDA device: the first few eagerly (the
    warm-up), the rest as replays of one graph of a block of calls captured here, all on one side
    stream. ``iteration`` may only work in place on tensors that outlive this call, and read
    nothing from the host that changes between calls. Captured with ``capture_begin`` rather than
    ``torch.cuda.graph``, whose device synchronisation and ``empty_cache()`` would be paid at
    every evaluation."""
    eager, block, replays = split(times)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(eager):
            iteration()
        if replays > 0:
            captured = torch.cuda.CUDAGraph()
            captured.capture_begin()
            try:
                for _ in range(block):
                    iteration()
            finally:
                captured.capture_end()
            for _ in range(replays):
                captured.replay()
    torch.cuda.current_stream().wait_stream(side)
