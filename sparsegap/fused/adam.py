"""Adam for the fused SAE step, exactly ``torch.optim.Adam``'s update in fp32 on the framework
optimiser's own state: ``adam_`` (optionally writing the bf16 copy and the atoms' squared norms),
``renormalise_`` (the scaling pass those norms allow), ``adam_atoms_`` (Adam and the
renormalisation in one pass) and ``matmul_adam_`` (the gradient GEMM with Adam in its epilogue).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegap.fused.code_grad import fits_shared_memory, grouped_tile


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
    # p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps). Every Adam kernel here runs this.
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
    p_ptr, g_ptr, m_ptr, v_ptr, low_ptr, step_ptr,
    dim, atoms, stride_d, stride_a, lr, beta1, beta2, eps,
    BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr,
):  # fmt: skip
    # Each program owns BLOCK_A whole atoms (BLOCK_D ≥ dim): the updated atoms stay in
    # registers until their norms are known, so the renormalisation costs no pass of its own.
    d = tl.arange(0, BLOCK_D)
    a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    inside = (d[:, None] < dim) & (a[None, :] < atoms)
    offsets = d[:, None] * stride_d + a[None, :] * stride_a
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
    axis: int = 0,
) -> None:
    """``adam_`` for a decoder kept at unit-norm atoms: one Adam update of the contiguous fp32
    ``atoms``, then each atom divided by its norm (as ``Decoder.renormalise_``), and the result's
    copy written to ``low`` — in one kernel and one pass over memory where an atom fits a
    program's registers (dimension ≤ 4,096), else with ``adam_`` and ``renormalise_``. Atoms
    are the columns of a (d, L) matrix (``axis=0``) or the rows of an (L, d) one (``axis=1``)."""
    rows, cols = atoms.shape
    _check_contiguous("adam_atoms_", (rows, cols), atoms, grad, exp_avg, exp_avg_sq, low)
    dim, count = (rows, cols) if axis == 0 else (cols, rows)
    block_d = triton.next_power_of_2(dim)
    # Atoms in columns, d = 768: programs read 16-byte row segments, the neighbouring
    # program the rest of each 32-byte sector. Measured on an H100 (768 × 24,576), this pass
    # cost about 0.18 ms more than adam_ with sumsq + renormalise_; over atoms in rows it runs
    # at HBM speed (177 µs). SAETrainer (atoms in columns) takes the two kernels.
    block_a = max(1, _ATOM_TILE // block_d)
    if block_d > _ATOM_TILE:
        sumsq = torch.zeros(count, device=atoms.device)
        adam_(atoms, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, sumsq=sumsq, axis=axis)
        renormalise_(atoms, low, sumsq, axis)
        return
    strides = (cols, 1) if axis == 0 else (1, cols)
    _adam_atoms_kernel[(triton.cdiv(count, block_a),)](
        atoms, grad, exp_avg, exp_avg_sq, low, step, dim, count, *strides,
        lr, betas[0], betas[1], eps, BLOCK_D=block_d, BLOCK_A=block_a, num_warps=8,
    )  # fmt: skip


def _matmul_adam_configs() -> list[triton.Config]:
    # (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps, CHUNKS): tiles whose shared memory lets one or
    # two programs share an SM (so that one's Adam epilogue, memory-bound, can overlap the
    # other's main loop), the epilogue in CHUNKS column pieces to bound its registers.
    if os.environ.get("TRITON_INTERPRET") == "1":
        tiles = [(32, 32, 16, 1, 4, 4)]  # four chunks: every epilogue path
    else:
        tiles = [
            (128, 128, 64, 3, 8, 2),
            (128, 128, 64, 3, 8, 4),
            (128, 128, 64, 4, 8, 4),
            (128, 256, 64, 3, 8, 4),
            (256, 128, 64, 3, 8, 4),
            (128, 64, 64, 4, 4, 2),
            (64, 128, 64, 4, 4, 2),
        ]
    return [
        triton.Config(
            {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "CHUNKS": c},
            num_stages=s,
            num_warps=w,
            pre_hook=_set_matmul_adam_blocks,
        )
        for m, n, k, s, w, c in tiles
    ]


def _set_matmul_adam_blocks(args: dict) -> None:
    m, n, k = args["BLOCK_M"], args["BLOCK_N"], args["BLOCK_K"]
    args["at_desc"].block_shape = [k, m]
    args["b_desc"].block_shape = [k, n]


@triton.jit
def _adam_chunk(
    g, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2, eps,
    correction1, correction2_sqrt,
):  # fmt: skip
    # The Adam update of one chunk of a tile whose gradient g is already in registers.
    rm = off_m + tl.arange(0, g.shape[0])
    rn = off_n + tl.arange(0, g.shape[1])
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
    p, m, v = _adam_update(p, g, m, v, lr, beta1, beta2, eps, correction1, correction2_sqrt)
    tl.store(p_ptr + offsets, p, mask=inside)
    tl.store(m_ptr + offsets, m, mask=inside)
    tl.store(v_ptr + offsets, v, mask=inside)
    tl.store(low_ptr + offsets, p.to(low_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _adam_halves(
    g, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2, eps, c1, c2,
    ROWS: tl.constexpr, COLS: tl.constexpr,
):  # fmt: skip
    # _adam_chunk on the left and right column halves of g (fewer registers live at once).
    HALF: tl.constexpr = COLS // 2
    left, right = tl.split(tl.permute(tl.reshape(g, (ROWS, 2, HALF)), (0, 2, 1)))
    _adam_chunk(left, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2, eps,
                c1, c2)  # fmt: skip
    _adam_chunk(right, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n + HALF, M, N, lr, beta1,
                beta2, eps, c1, c2)  # fmt: skip


# restore_value: autotuning's trial runs must leave the parameter and its moments as they were.
@triton.autotune(
    configs=_matmul_adam_configs(),
    prune_configs_by={"early_config_prune": fits_shared_memory},
    key=["M", "N", "K", "PRECISION"],
    restore_value=["p_ptr", "m_ptr", "v_ptr", "low_ptr"],
)
@triton.jit
def _matmul_adam_kernel(
    at_desc, b_desc, p_ptr, m_ptr, v_ptr, low_ptr, step_ptr,
    M, N, K, lr, beta1, beta2, eps,
    PRECISION: tl.constexpr, CHUNKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # g = atᵀ·b for one tile (TMA loads; at is read transposed), then Adam on it in place: the
    # gradient never goes to memory, and the update's traffic can overlap another program's
    # GEMM on the same SM.
    off_m, off_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = at_desc.load([k, off_m]).T
        b = b_desc.load([k, off_n])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    c1, c2 = _bias_corrections(step_ptr, beta1, beta2)
    if CHUNKS == 1:
        _adam_chunk(acc, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2,
                    eps, c1, c2)  # fmt: skip
    elif CHUNKS == 2:
        _adam_halves(acc, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2,
                     eps, c1, c2, BLOCK_M, BLOCK_N)  # fmt: skip
    else:  # 4: each half in halves
        HALF: tl.constexpr = BLOCK_N // 2
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, HALF)), (0, 2, 1)))
        _adam_halves(left, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n, M, N, lr, beta1, beta2,
                     eps, c1, c2, BLOCK_M, HALF)  # fmt: skip
        _adam_halves(right, p_ptr, m_ptr, v_ptr, low_ptr, off_m, off_n + HALF, M, N, lr, beta1,
                     beta2, eps, c1, c2, BLOCK_M, HALF)  # fmt: skip


def matmul_adam_(
    at: Tensor,
    b: Tensor,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    low: Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """``adam_(param, atᵀ·b, ...)`` in one kernel: the gradient GEMM's epilogue applies Adam
    (exactly ``adam_``'s update, from the fp32 accumulator rather than a rounded gradient) and
    writes the parameter's copy ``low``. ``at`` (K, M) and ``b`` (K, N) contiguous, in the GEMMs'
    dtype (for the SAE's encoder: the code gradient (B, L) and the batch (B, d)); ``param``
    (M, N) fp32 with its moments, contiguous. TMA loads: Hopper or later (or the interpreter)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    depth, rows = at.shape
    cols = b.shape[1]
    if b.shape[0] != depth:
        raise ValueError(f"matmul_adam_: {tuple(at.shape)}ᵀ @ {tuple(b.shape)}")
    _check_contiguous("matmul_adam_", (rows, cols), param, exp_avg, exp_avg_sq, low)
    precision = "ieee" if at.dtype == torch.float32 else "tf32"
    descs = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (at, b)]

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"]),)

    _matmul_adam_kernel[grid](
        *descs, param, exp_avg, exp_avg_sq, low, step, rows, cols, depth,
        lr, betas[0], betas[1], eps, PRECISION=precision,
    )  # fmt: skip
