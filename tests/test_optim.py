"""sparsegap.optim.Adam takes torch.optim.Adam's steps, fused or not, whatever the gradients'
memory layout."""

from __future__ import annotations

import pytest
import torch

from sparsegap.optim import Adam


def _grads(step: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(shape, generator=g) for shape in shapes]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_adam_matches_torch_adam(fused, transposed):
    shapes = [(3, 4, 5), (7, 1)]
    start = [torch.randn(s, generator=torch.Generator().manual_seed(9)) for s in shapes]
    ours = [p.clone() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    optimiser = Adam(ours, lr=1e-2)
    optimiser.fused = fused
    reference = torch.optim.Adam(theirs, lr=1e-2)
    for step in range(5):
        grads = _grads(step, shapes)
        for p, q, g in zip(ours, theirs, grads, strict=True):
            # A gradient with other strides than its parameter (a transposed GEMM's output).
            p.grad = g.transpose(0, 1).contiguous().transpose(0, 1) if transposed else g
            q.grad = g.clone()
        assert not transposed or ours[0].grad.stride() != ours[0].stride()
        optimiser.step()
        reference.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-6, atol=1e-7)
