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


# init=authors: the authors' models call torch.manual_seed(run_seed + 42) before building their
# layers, with run_seed = seed + i for run i (experiments/models.py, known_D.py, unknown_Z_D.py).
AUTHORS_SEED_OFFSET = 42


class AuthorsGenerator(torch.Generator):
    """A replica's generator under ``init=authors``: seeded ``seed + i + 42`` and drawn from as
    PyTorch's default ``nn.Linear`` initialisation draws (kaiming-uniform weights with a = √5,
    uniform biases in ±1/√fan_in, each layer's weight then bias, layers in construction order).

    The authors' SAE and MLP build an ``nn.Linear(N, M)`` decoder after their encoder layers and
    then replace its weight by ``torch.randn(M, N)``: the replaced layer's draws still advance the
    stream, so the generator remembers the layers it built (``layered``, ``biased``) and the
    learned decoder discards the same draws first (``authors_decoder_weight``).
    """

    layered: bool = False
    biased: bool = False


def replica_generators(
    seed: int, replicas: int, scheme: str = "sparsegap"
) -> list[torch.Generator]:
    """One generator per replica, keyed by ``seed + i``, so replica i of an R-replica run is
    initialised exactly like a one-replica run with seed ``seed + i``. ``scheme="authors"``: the
    authors' seeding and draws (``AuthorsGenerator``)."""
    if scheme == "authors":
        return [
            AuthorsGenerator().manual_seed(seed + i + AUTHORS_SEED_OFFSET) for i in range(replicas)
        ]
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


def _authors_linear(g: AuthorsGenerator, fan_in: int, fan_out: int, bias: bool) -> list[Tensor]:
    """Weight (out, in) and bias (out, 1) exactly as ``nn.Linear(fan_in, fan_out)`` initialises
    them after ``torch.manual_seed`` (its ``reset_parameters``, with this generator)."""
    g.layered, g.biased = True, bias
    weight = nn.init.kaiming_uniform_(torch.empty(fan_out, fan_in), a=math.sqrt(5), generator=g)
    if not bias:
        return [weight]
    bound = 1 / math.sqrt(fan_in)
    return [weight, nn.init.uniform_(torch.empty(fan_out, 1), -bound, bound, generator=g)]


def authors_decoder_weight(g: AuthorsGenerator, dim: int, latents: int) -> Tensor:
    """The authors' learned dictionary (M, N): ``torch.randn(M, N)``, after the draws of the
    ``nn.Linear(N, M)`` decoder it replaces when their model has layers (SAE, MLP; their sparse
    coding draws its dictionary first)."""
    if g.layered:
        _authors_linear(g, latents, dim, g.biased)
    return torch.randn(dim, latents, generator=g)


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
        if all(isinstance(g, AuthorsGenerator) for g in generators):
            drawn = [_authors_linear(g, fan_in, fan_out, bias) for g in generators]
            self.weight = nn.Parameter(torch.stack([d[0] for d in drawn]))
            self.bias = nn.Parameter(torch.stack([d[1] for d in drawn])) if bias else None
            return
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
