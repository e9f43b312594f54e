"""Adam for the fused SAE step, exactly ``torch.optim.Adam``'s update in fp32 on the framework
optimiser's own state: ``adam_`` (optionally writing the bf16 copy and the atoms' squared norms),
``renormalise_`` (the scaling pass those norms allow) and ``adam_atoms_`` (Adam and the
renormalisation in one pass, for atoms in rows).

Measured and removed (docs/RESULTS.md, 2026-11-27): the encoder's Adam in its gradient GEMM's
epilogue (``matmul_adam_``), slower than cuBLAS's GEMM + ``adam_``; ``adam_atoms_`` over atoms in
columns, 0.18 ms per step slower than ``adam_`` + ``renormalise_``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


def _check_contiguous(caller: str, shape: tuple[int, int], *tensors: Tensor | None) -> None:
    """The Adam kernels index every operand as one contiguous ``shape`` matrix."""
    for t in tensors:
        if t is not None and (tuple(t.shape) != shape or not t.is_contiguous()):
            raise ValueError(f"{caller}: {tuple(t.shape)} is not a contiguous {shape}")


@triton.jit
def _bias_corrections(step_ptr, beta1, beta2):
    # 1 − β1^t and √(1 − β2^t) for the step count t on the device (CUDA-graph safe).
    t = tl.load(step_ptr)
    return 1.0 - tl.exp2(t * tl.log2(beta1)), tl.sqrt(1.0 - tl.exp2(t * tl.log2(beta2)))


@triton.jit
def _adam_update(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2_sqrt):
    # torch.optim.Adam's update, term for term: m ← lerp(m, g, 1−β1), v ← β2 v + (1−β2) g²,
    # p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps).
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / correction1) * m / (tl.sqrt(v) / correction2_sqrt + eps)
    return p, m, v


@triton.jit
def _adam_moments(p_ptr, g_ptr, m_ptr, v_ptr, step_ptr, offsets, inside, lr, beta1, beta2, eps):
    # Loads a tile of the parameter, its gradient (any float dtype) and moments, updates them,
    # stores the moments and returns the updated parameter (its store is the caller's).
    correction1, correction2_sqrt = _bias_corrections(step_ptr, beta1, beta2)
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
    p, m, v = _adam_update(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2_sqrt)
    tl.store(m_ptr + offsets, m, mask=inside)
    tl.store(v_ptr + offsets, v, mask=inside)
    return p


@triton.jit
def _adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, low_ptr, sumsq_ptr, step_ptr,
    rows, cols, lr, beta1, beta2, eps,
    LOW: tl.constexpr, SUMSQ: tl.constexpr, AXIS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    offsets = r[:, None] * cols + c[None, :]
    p = _adam_moments(p_ptr, g_ptr, m_ptr, v_ptr, step_ptr, offsets, inside, lr, beta1, beta2, eps)
    tl.store(p_ptr + offsets, p, mask=inside)
    if LOW:
        tl.store(low_ptr + offsets, p.to(low_ptr.dtype.element_ty), mask=inside)
    if SUMSQ:  # one atomic per column (AXIS 0) or row (AXIS 1) of the tile
        if AXIS == 0:
            tl.atomic_add(sumsq_ptr + c, tl.sum(p * p, axis=0), mask=c < cols)
        else:
            tl.atomic_add(sumsq_ptr + r, tl.sum(p * p, axis=1), mask=r < rows)


def adam_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    low: Tensor | None = None,
    sumsq: Tensor | None = None,
    axis: int = 0,
) -> None:
    """One Adam update of the contiguous 2-D fp32 ``param`` in place, ``step`` (a 0-d fp32 device
    tensor) already counting this step. Optionally writes ``low`` (the updated parameter in a
    lower precision) and adds to ``sumsq`` the squared norms of the updated parameter's columns
    (``axis=0``: the sum runs over rows) or rows (``axis=1``)."""
    rows, cols = param.shape
    _check_contiguous("adam_", (rows, cols), param, grad, exp_avg, exp_avg_sq, low)
    block_r, block_c = 16, 256
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq,
        low if low is not None else param, sumsq if sumsq is not None else param,
        step, rows, cols, lr, betas[0], betas[1], eps,
        LOW=low is not None, SUMSQ=sumsq is not None, AXIS=axis, BLOCK_R=block_r, BLOCK_C=block_c,
        num_warps=8,
    )  # fmt: skip


@triton.jit
def _renormalise_kernel(
    d_ptr, low_ptr, sumsq_ptr, rows, cols,
    AXIS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    offsets = r[:, None] * cols + c[None, :]
    # As Decoder.renormalise_: divide by the norm clamped at 1e-12.
    if AXIS == 0:  # atoms in columns
        norm = tl.maximum(tl.sqrt(tl.load(sumsq_ptr + c, mask=c < cols, other=1.0)), 1e-12)
        atoms = tl.load(d_ptr + offsets, mask=inside, other=0.0) / norm[None, :]
    else:  # atoms in rows
        norm = tl.maximum(tl.sqrt(tl.load(sumsq_ptr + r, mask=r < rows, other=1.0)), 1e-12)
        atoms = tl.load(d_ptr + offsets, mask=inside, other=0.0) / norm[:, None]
    tl.store(d_ptr + offsets, atoms, mask=inside)
    tl.store(low_ptr + offsets, atoms.to(low_ptr.dtype.element_ty), mask=inside)


def renormalise_(atoms: Tensor, low: Tensor, sumsq: Tensor, axis: int = 0) -> None:
    """Divide each atom of the contiguous fp32 ``atoms`` by its norm, given as ``sumsq`` (from
    ``adam_``), and write the result's copy in ``low``'s dtype. Atoms are the columns of a
    (d, L) matrix (``axis=0``, the framework's layout) or the rows of an (L, d) one (``axis=1``)."""
    rows, cols = atoms.shape
    block_r, block_c = 16, 256
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _renormalise_kernel[grid](
        atoms, low, sumsq, rows, cols, AXIS=axis, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8
    )


@triton.jit
def _adam_atoms_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, low_ptr, step_ptr, dim, atoms, lr, beta1, beta2, eps,
    BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr,
):  # fmt: skip
    # Each program owns BLOCK_A whole atoms (rows; BLOCK_D ≥ dim): the updated atoms stay in
    # registers until their norms are known, so the renormalisation costs no pass of its own.
    d = tl.arange(0, BLOCK_D)
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    inside = (d[:, None] < dim) & (a[None, :] < atoms)
    offsets = d[:, None] + a[None, :] * dim
    p = _adam_moments(p_ptr, g_ptr, m_ptr, v_ptr, step_ptr, offsets, inside, lr, beta1, beta2, eps)
    norm = tl.maximum(tl.sqrt(tl.sum(p * p, axis=0)), 1e-12)  # as Decoder.renormalise_
    p = p / norm[None, :]
    tl.store(p_ptr + offsets, p, mask=inside)
    tl.store(low_ptr + offsets, p.to(low_ptr.dtype.element_ty), mask=inside)


# Elements one program of _adam_atoms_kernel holds per array: 16 per thread, as _adam_kernel's
# tiles (registers for several programs per SM, which a memory-bound kernel needs to hide its
# latency). Longer atoms take the two-kernel path (adam_ with sumsq, then renormalise_).
_ATOM_TILE = 4096


def adam_atoms_(
    atoms: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    low: Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """``adam_`` for a decoder kept at unit-norm atoms, the rows of the contiguous fp32 (L, d)
    ``atoms``: one Adam update, then each atom divided by its norm (as ``Decoder.renormalise_``),
    and the result's copy written to ``low`` — in one kernel and one pass over memory where an
    atom fits a program's registers (d ≤ 4,096; at HBM speed on an H100, 177 µs for 24,576 ×
    768), else with ``adam_`` and ``renormalise_``."""
    count, dim = atoms.shape
    _check_contiguous("adam_atoms_", (count, dim), atoms, grad, exp_avg, exp_avg_sq, low)
    block_d = triton.next_power_of_2(dim)
    block_a = max(1, _ATOM_TILE // block_d)
    if block_d > _ATOM_TILE:
        sumsq = torch.zeros(count, device=atoms.device)
        adam_(atoms, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, sumsq=sumsq, axis=1)
        renormalise_(atoms, low, sumsq, axis=1)
        return
    _adam_atoms_kernel[(triton.cdiv(count, block_a),)](
        atoms, grad, exp_avg, exp_avg_sq, low, step, dim, count,
        lr, betas[0], betas[1], eps, BLOCK_D=block_d, BLOCK_A=block_a, num_warps=8,
    )  # fmt: skip
