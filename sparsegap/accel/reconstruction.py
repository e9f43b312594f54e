"""The reconstruction loss mean((D·S − X)²) and mean(S) per replica with its backward written by
hand: as an autograd function (``reconstruction``, the scenarios' loss) and as a plain function
(``reconstruction_backward``, for the encoders' ``Encoder.fast_step``)."""

from __future__ import annotations

import torch
from torch import Tensor


class _Reconstruction(torch.autograd.Function):
    """Per replica: mean((D·S - X)²) and mean(S), with a hand-written backward.

    Codes are non-negative for every encoder (ReLU or exp outputs), so mean|S| = mean(S) and its
    gradient is a constant; at S = 0 that constant is masked by the encoder's own ReLU, which
    makes the gradients identical to autograd's through ``abs``. Five kernels instead of about
    twenty: at the paper's problem size a training step is dominated by per-kernel overhead, not
    arithmetic.
    """

    @staticmethod
    def forward(ctx, codes: Tensor, atoms: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        residual = torch.baddbmm(x.expand(atoms.shape[0], *x.shape), atoms, codes, beta=-1)
        mse = residual.float().square().mean(dim=(1, 2))
        l1 = codes.float().mean(dim=(1, 2))
        ctx.save_for_backward(codes, atoms, residual)
        return mse, l1

    @staticmethod
    def backward(ctx, grad_mse: Tensor, grad_l1: Tensor) -> tuple[Tensor | None, ...]:
        codes, atoms, residual = ctx.saved_tensors
        dim, samples = residual.shape[1:]
        # Under autocast (device.autocast=bf16) the residual is bfloat16: the matmuls run in
        # its dtype and the gradients return in their inputs' dtypes.
        low = residual.dtype
        scale = (grad_mse * (2.0 / (dim * samples))).view(-1, 1, 1).to(low)
        grad_codes = grad_atoms = None
        if ctx.needs_input_grad[0]:
            l1_scale = (grad_l1 / codes[0].numel()).view(-1, 1, 1).to(low)
            grad_codes = torch.bmm(atoms.to(low).transpose(1, 2), residual)
            grad_codes = grad_codes.mul_(scale).add_(l1_scale).to(codes.dtype)
        if ctx.needs_input_grad[1]:
            grad_atoms = torch.bmm(residual, codes.to(low).transpose(1, 2))
            grad_atoms = grad_atoms.mul_(scale).to(atoms.dtype)
        return grad_codes, grad_atoms, None


def reconstruction(codes: Tensor, atoms: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(mse, mean(codes)) per replica: non-negative codes (R, L, B), atoms (R, M, L), x (M, B)."""
    return _Reconstruction.apply(codes, atoms, x)


@torch.no_grad()
def reconstruction_backward(
    codes: Tensor,
    atoms: Tensor,
    x: Tensor,
    l1_coeff: float | Tensor,
    atoms_grad: bool,
    losses: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor | None]:
    """``reconstruction`` and its backward by hand, for encoders' ``fast_step``: per replica
    (mse, mean(codes)) in fp32 (None, None unless ``losses``: a step that nobody logs skips
    four kernels), the gradient of mse + l1_coeff·mean(codes) with respect to the
    codes (R, L, B; the L1 constant not yet masked by the encoder's ReLU), and with respect to the
    atoms (R, M, L) when ``atoms_grad``. x and atoms come in the codes' dtype (the loop casts them
    once); the MSE's scale is folded into the small residual, so no pass over the codes is spent
    on it."""
    replicas, dim, latents = atoms.shape
    samples = x.shape[1]
    residual = torch.baddbmm(x.expand(replicas, dim, samples), atoms, codes, beta=-1)
    mse = l1 = None
    if losses:
        mse = residual.float().square().mean(dim=(1, 2))
        l1 = codes.float().mean(dim=(1, 2))
    residual.mul_(2.0 / (dim * samples))
    grad_codes = torch.bmm(atoms.transpose(1, 2), residual).add_(l1_coeff / (latents * samples))
    grad_atoms = torch.bmm(residual, codes.transpose(1, 2)) if atoms_grad else None
    return mse, l1, grad_codes, grad_atoms


def relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """The gradient through ``output = ReLU(·)``, in place in ``grad``."""
    return torch.ops.aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)
