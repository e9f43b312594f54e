"""Building blocks with a leading replica axis: R independent models in one set of tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

# Model streams are keyed away from the data stream: the data generator is seeded with the bare
# ``data.seed`` (to reproduce the authors' data exactly), so seeding replica i with a bare
# ``seed + i`` would make the replica whose seed equals ``data.seed`` initialise its decoder from
# the very draws that made the true dictionary (MCC 1.0 before training).
_MODEL_STREAM = 0x5A6E


def replica_generators(seed: int, replicas: int) -> list[torch.Generator]:
    """One generator per replica, keyed by ``seed + i``, so replica i of an R-replica run is
    initialised exactly like a one-replica run with seed ``seed + i``."""
    return [torch.Generator().manual_seed(_model_seed(seed + i)) for i in range(replicas)]


def _model_seed(seed: int) -> int:
    # 32 bits, so consumers that need a NumPy seed (scikit-learn) can take the generator's seed.
    return int(np.random.SeedSequence([seed, _MODEL_STREAM]).generate_state(1, dtype=np.uint32)[0])


def per_replica(
    generators: Sequence[torch.Generator], draw: Callable[[torch.Generator], Tensor]
) -> Tensor:
    """Stack one draw per replica generator along a new leading axis."""
    return torch.stack([draw(g) for g in generators])


def uniform_init(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], bound: float
) -> Tensor:
    return per_replica(generators, lambda g: (torch.rand(shape, generator=g) * 2 - 1) * bound)


class ReplicaLinear(nn.Module):
    """R independent linear maps y = W·x (+ b) on column batches.

    ``x`` is either (in, B), shared by all replicas (data), or (R, in, B). Weights are (R, out, in)
    and initialised like ``nn.Linear`` (uniform in ±1/sqrt(in)), each replica from its own
    generator.
    """

    def __init__(
        self, fan_in: int, fan_out: int, generators: Sequence[torch.Generator], bias: bool = False
    ) -> None:
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        self.fan_in, self.fan_out, self.replicas = fan_in, fan_out, len(generators)
        self.weight = nn.Parameter(uniform_init(generators, (fan_out, fan_in), bound))
        self.bias = nn.Parameter(uniform_init(generators, (fan_out, 1), bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if x.dtype == self.weight.dtype else self.weight.to(x.dtype)
        if x.dim() == 2:
            # Shared input: one GEMM with all replicas' rows stacked is faster than R small ones.
            w = weight.reshape(self.replicas * self.fan_out, self.fan_in)
            y = (w @ x).view(self.replicas, self.fan_out, x.shape[1])
        else:
            y = torch.bmm(weight, x)
        if self.bias is None:
            return y
        bias = self.bias.to(x.dtype)
        # In place when no graph is recorded (hand-written steps): one pass fewer over y.
        return y + bias if torch.is_grad_enabled() else y.add_(bias)

    @torch.no_grad()
    def backward_(self, x: Tensor, grad_out: Tensor, input_grad: bool = False) -> Tensor | None:
        """Hand-written backward of ``forward(x)`` for the upstream gradient ``grad_out``
        (R, out, B): sets the weight's and bias's ``.grad`` (in their dtype) and returns the
        gradient with respect to x (R, in, B, in grad_out's dtype) when ``input_grad``."""
        replicas, fan_out, samples = grad_out.shape
        if x.dim() == 2:  # shared input: one GEMM over the stacked rows, as in forward
            # Computed transposed, x·gᵀ (in × R·out): with an 8-wide output, CPU BLAS runs the
            # untransposed g·xᵀ 1.3–3× slower on one thread (1,280 rows: 1.97 vs 0.62 ms).
            rows = grad_out.reshape(replicas * fan_out, samples)
            # (contiguous: the fused Adam kernel reads gradients as flat buffers)
            grad_w = (x @ rows.T).T.contiguous().view(self.weight.shape)
        else:
            grad_w = torch.bmm(grad_out, x.transpose(1, 2))
        self.weight.grad = grad_w.to(self.weight.dtype)
        if self.bias is not None:
            self.bias.grad = grad_out.sum(dim=2, keepdim=True).to(self.bias.dtype)
        if not input_grad:
            return None
        return torch.bmm(self.weight.to(grad_out.dtype).transpose(1, 2), grad_out)
