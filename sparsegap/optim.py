"""Adam over a fixed list of tensors, one fused kernel per step where the device has one.

The update is exactly ``torch.optim.Adam`` (tests/test_optim.py checks it). It is kept local for
two measured reasons: constructing any ``torch.optim`` optimiser imports ``torch._dynamo``
(about 2 s per process, a third of a default run's start-up), and its per-step bookkeeping costs
more than the arithmetic of a full-batch step on this problem size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class Adam:
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        # A device tensor under captured CUDA graphs (sparsegap/accel/graph.py), set per step.
        self.lr: float | Tensor = lr
        (self.beta1, self.beta2), self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        devices = {p.device.type for p in self.params}
        self.fused = bool(self.params) and devices <= {"cpu", "cuda"} and len(devices) == 1
        device = self.params[0].device if self.params else "cpu"
        self.steps = [torch.zeros((), device=device) for _ in self.params]
        self.t = 0

    def state_dict(self) -> dict[str, Tensor]:
        """The moments and step counts, named ``exp_avg.<i>``, ``exp_avg_sq.<i>``, ``step.<i>``
        (parameter i of the list) — what a checkpoint stores to resume exactly."""
        state: dict[str, Tensor] = {}
        for i, (m, v, s) in enumerate(zip(self.exp_avg, self.exp_avg_sq, self.steps, strict=True)):
            state |= {f"exp_avg.{i}": m, f"exp_avg_sq.{i}": v, f"step.{i}": s}
        state["t"] = torch.tensor(self.t)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for i, (m, v, s) in enumerate(zip(self.exp_avg, self.exp_avg_sq, self.steps, strict=True)):
            m.copy_(state[f"exp_avg.{i}"])
            v.copy_(state[f"exp_avg_sq.{i}"])
            s.copy_(state[f"step.{i}"])
        self.t = int(state["t"])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # The fused kernel reads each gradient as a flat buffer in the parameter's layout: a
        # strided (e.g. transposed) gradient would be applied to the wrong elements, silently.
        grads = [
            g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
            for g, p in zip(grads, self.params, strict=True)
        ]
        if self.fused:
            torch._foreach_add_(self.steps, 1)
            torch._fused_adam_(
                self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps,
                lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=0.0,
                eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip
            return
        correction1 = 1 - self.beta1**self.t
        correction2_sqrt = math.sqrt(1 - self.beta2**self.t)
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)
