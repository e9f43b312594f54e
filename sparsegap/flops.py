"""Analytic FLOP counts (paper App. G), per replica.

Every encoder and inference algorithm declares its own counts next to its forward pass using the
helpers here, so counts and code cannot drift apart; tests/test_flops.py checks the matmul part
against ``torch.utils.flop_counter.FlopCounterMode`` on real steps. Counts are per model (one
replica) and per call over ``samples`` samples; a multiply-add is 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

# Adam per parameter: two moment updates (3 + 4), bias corrections and the step (5).
ADAM_FLOPS_PER_PARAM = 12


@dataclass(frozen=True)
class Flops:
    """A FLOP count split into matmul (what FlopCounterMode sees) and elementwise work."""

    matmul: int = 0
    elementwise: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matmul + other.matmul, self.elementwise + other.elementwise)

    def __mul__(self, k: int) -> Flops:
        return Flops(self.matmul * k, self.elementwise * k)

    __rmul__ = __mul__


def linear_forward(fan_in: int, fan_out: int, samples: int, bias: bool = False) -> Flops:
    return Flops(matmul=2 * fan_in * fan_out * samples, elementwise=fan_out * samples * bias)


def linear_backward(
    fan_in: int, fan_out: int, samples: int, input_grad: bool, bias: bool = False
) -> Flops:
    """Weight gradient always; input gradient only when the input needs one (not for data)."""
    matmul = 2 * fan_in * fan_out * samples * (2 if input_grad else 1)
    return Flops(matmul=matmul, elementwise=fan_out * samples * bias)


def relu(width: int, samples: int) -> Flops:
    return Flops(elementwise=width * samples)


def adam_update(parameters: int) -> Flops:
    return Flops(elementwise=ADAM_FLOPS_PER_PARAM * parameters)


def reconstruction_loss(
    latents: int, dim: int, samples: int, decoder_grad: bool
) -> tuple[Flops, Flops]:
    """Forward and backward of mean((D·S - X)^2) + l1·mean(S) for one replica.

    Forward: decode (matmul), residual, square, two means, L1. Backward: gradient to the codes
    (matmul), plus the decoder gradient when the decoder is learned.
    """
    forward = linear_forward(latents, dim, samples) + Flops(
        elementwise=3 * dim * samples + 2 * latents * samples
    )
    backward = linear_backward(latents, dim, samples, input_grad=True)
    if not decoder_grad:
        backward = Flops(matmul=backward.matmul // 2, elementwise=backward.elementwise)
    backward += Flops(elementwise=2 * dim * samples + 2 * latents * samples)
    return forward, backward


def renormalise_columns(rows: int, columns: int) -> Flops:
    """Unit-norm columns: square, sum, sqrt and divide."""
    return Flops(elementwise=3 * rows * columns + columns)
