"""Triton kernels for a fused SAE training step on a GPU: ``train.Step`` runs ``SAETrainer``
for the SAE's hand-written step (``encoder.fast_step``) on CUDA with ``device.autocast=bf16``, and
``sparsegap.bench_gpu`` measures the kernels (its ``FusedSAEStep`` adds a CUDA graph, persistent
bf16 weight copies and a second stream).

Why: at the paper's LM shape (768 → 24,576 latents, 4,096-token batches) a plain step spends
almost half its time in memory-bound passes over the 4,096 × 24,576 code matrix and the 37.7 M
fp32 parameters, not in its five GEMMs. These kernels fold those passes into work that happens
anyway:

- ``forward_residual``: the ReLU in the encoder GEMM's cuBLASLt epilogue, the MSE scale and
  ``−x`` in the decoder GEMM's alpha and beta.
- ``masked_grad``: the code gradient GEMM ``r·D`` with the L1 constant, the ReLU mask (read from
  the codes), the cast to bf16 and the train statistics (each latent's sum of codes, for L1 and
  dead-latent tracking, and the count of active codes, for L0) in its epilogue — one read of the
  codes instead of three extra passes.
- ``adam_``: Adam in fp32 (exactly ``torch.optim.Adam``'s update) that reads a bf16 or fp32
  gradient and can refresh the parameter's bf16 copy in the same pass and, for the decoder,
  accumulate each atom's squared norm, so that a renormalisation is a single scaling pass
  (``renormalise_``). The step count lives on the device (CUDA-graph safe).

Layout: token-major (one row per token), as cuBLAS and the activation cache prefer: codes and
their gradient (B, L), the encoder weight (L, d), the decoder (d, L) with one atom per column.
Importing this module needs ``triton`` (CUDA builds of torch bring it; ``train`` imports it only
where it applies). ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (slowly; fp32 only:
the interpreter's bf16 ``tl.dot`` is wrong), which is how tests/test_fused.py checks them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

_TILES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps), Hopper-sized
    (128, 256, 64, 3, 8),
    (256, 128, 64, 3, 8),
    (128, 128, 64, 4, 8),
    (128, 128, 64, 4, 4),
    (128, 256, 64, 4, 8),
    (64, 256, 64, 4, 4),
    (128, 256, 128, 2, 8),
    (128, 128, 128, 3, 8),
]


def _configs(tma: bool, persistent: bool = False) -> list[triton.Config]:
    # The interpreter (CPU) cannot autotune; small tiles there exercise the multi-tile paths.
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    tiles = [(32, 32, 16, 1, 4)] if interpreted else _TILES
    # EARLY: load the codes tile before the main loop (its latency hidden behind the GEMM, at
    # the cost of registers held through it) or after it; which wins depends on the tile. The
    # persistent kernel loads it after (the next tile's loads overlap it instead), whole or in
    # two halves (SUBTILE: half the epilogue's shared memory, left to the main loop's stages);
    # the interpreter runs the halves (the whole tile's epilogue is the TMA kernel's).
    early = [False] if interpreted or persistent else [True, False]
    subtile = ([True] if interpreted else [True, False]) if persistent else [None]
    return [
        triton.Config(
            {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "EARLY": e}
            | ({} if h is None else {"SUBTILE": h}),
            num_stages=s,
            num_warps=w,
            pre_hook=_set_blocks if tma else None,
        )
        for m, n, k, s, w in tiles
        for e in early
        for h in subtile
    ]


def _set_blocks(args: dict) -> None:
    """Give the TMA descriptors the block shapes of the configuration being run."""
    m, n, k = args["BLOCK_M"], args["BLOCK_N"], args["BLOCK_K"]
    args["a_desc"].block_shape = [m, k]
    # A K-major right operand (the atoms stored transposed, (L, d)) is loaded as (n, k) tiles.
    args["b_desc"].block_shape = [n, k] if args["B_KMAJOR"] else [k, n]
    epilogue = [m, n // 2] if args.get("SUBTILE") else [m, n]
    args["codes_desc"].block_shape = epilogue
    args["out_desc"].block_shape = epilogue


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row blocks share each column block of b while it is in L2.
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def _masked_store(acc, codes, out_desc, off_m, off_n, N, constant, count_ptr, sums_ptr, STATS):
    # The TMA kernels' epilogue on one (sub)tile: mask, L1 constant, cast, store, statistics.
    active = codes > 0
    out_desc.store([off_m, off_n], tl.where(active, acc + constant, 0.0).to(out_desc.dtype))
    if STATS:
        rn = off_n + tl.arange(0, acc.shape[1])
        _epilogue_stats(codes, active, rn, N, count_ptr, sums_ptr)


@triton.jit
def _epilogue_stats(codes, active, rn, N, count_ptr, sums_ptr):
    # The codes' sum per latent (one atomic per latent per tile) and the active codes' count
    # (one per tile): a whole-tile count is cheaper than a second column reduction, and which
    # latents fired is sum > 0 (the codes are ReLU outputs).
    tl.atomic_add(sums_ptr + rn, tl.sum(codes.to(tl.float32), axis=0), mask=rn < N)
    tl.atomic_add(count_ptr, tl.sum(active.to(tl.int32), axis=None))


# restore_value: the statistics accumulate, so autotuning's trial runs must not add to them.
@triton.autotune(
    configs=_configs(tma=False),
    key=["M", "N", "K", "PRECISION", "stride_bn"],
    restore_value=["count_ptr", "sums_ptr"],
)
@triton.heuristics(
    {
        "EVEN": lambda a: (
            a["M"] % a["BLOCK_M"] == 0 and a["N"] % a["BLOCK_N"] == 0 and a["K"] % a["BLOCK_K"] == 0
        )
    }
)
@triton.jit
def _masked_grad_kernel(
    a_ptr, b_ptr, codes_ptr, out_ptr, count_ptr, sums_ptr,
    M, N, K, constant,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_om, stride_on,
    STATS: tl.constexpr, PRECISION: tl.constexpr, EVEN: tl.constexpr, EARLY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    off_m, off_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = off_m + tl.arange(0, BLOCK_M)
    rn = off_n + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_tile = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_tile = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    codes_tile = codes_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    if EARLY:
        codes = tl.load(codes_tile, mask=None if EVEN else inside, other=None if EVEN else 0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN:
            a = tl.load(a_tile)
            b = tl.load(b_tile)
        else:
            left = K - k
            a = tl.load(a_tile, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0.0)
            b = tl.load(b_tile, mask=(rk[:, None] < left) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk
    if not EARLY:
        codes = tl.load(codes_tile, mask=None if EVEN else inside, other=None if EVEN else 0.0)
    active = codes > 0
    grad = tl.where(active, acc + constant, 0.0).to(out_ptr.dtype.element_ty)
    out_tile = out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out_tile, grad, mask=None if EVEN else inside)
    if STATS:
        _epilogue_stats(codes, active, rn, N, count_ptr, sums_ptr)


@triton.autotune(
    configs=_configs(tma=True),
    key=["M", "N", "K", "PRECISION", "B_KMAJOR"],
    restore_value=["count_ptr", "sums_ptr"],
)
@triton.jit
def _masked_grad_tma_kernel(
    a_desc, b_desc, codes_desc, out_desc, count_ptr, sums_ptr,
    M, N, K, constant,
    STATS: tl.constexpr, PRECISION: tl.constexpr, EARLY: tl.constexpr, B_KMAJOR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # The same kernel with the tiles moved by the TMA engine (Hopper's bulk tensor copies):
    # no address arithmetic in the loop, bounds handled by the descriptors (zero padding).
    off_m, off_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    if EARLY:
        codes = codes_desc.load([off_m, off_n])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = a_desc.load([off_m, k])
        b = b_desc.load([off_n, k]).T if B_KMAJOR else b_desc.load([k, off_n])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if not EARLY:
        codes = codes_desc.load([off_m, off_n])
    _masked_store(acc, codes, out_desc, off_m, off_n, N, constant, count_ptr, sums_ptr, STATS)


@triton.autotune(
    configs=_configs(tma=True, persistent=True),
    key=["M", "N", "K", "PRECISION", "B_KMAJOR"],
    restore_value=["count_ptr", "sums_ptr"],
)
@triton.jit
def _masked_grad_persistent_kernel(
    a_desc, b_desc, codes_desc, out_desc, count_ptr, sums_ptr,
    M, N, K, constant,
    STATS: tl.constexpr, PRECISION: tl.constexpr, EARLY: tl.constexpr, B_KMAJOR: tl.constexpr,
    SUBTILE: tl.constexpr, PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # The TMA kernel as one program per SM walking the tiles: with K only 768 deep, each
    # tile's epilogue (codes in, gradient out, statistics) is long beside its main loop, and a
    # flattened loop lets the compiler issue the next tile's loads during it — a program per
    # tile, holding the SM's shared memory alone, leaves the epilogue exposed.
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    tile_out = tl.program_id(0) - PROGRAMS  # the epilogue's own counter, as Triton's tutorial
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True):
        off_m, off_n = _tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = a_desc.load([off_m, k])
            b = b_desc.load([off_n, k]).T if B_KMAJOR else b_desc.load([k, off_n])
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        tile_out += PROGRAMS
        out_m, out_n = _tile(tile_out, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        if SUBTILE:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            half_n = out_n + BLOCK_N // 2
            codes = codes_desc.load([out_m, out_n])
            _masked_store(left, codes, out_desc, out_m, out_n, N, constant, count_ptr, sums_ptr,
                          STATS)  # fmt: skip
            codes = codes_desc.load([out_m, half_n])
            _masked_store(right, codes, out_desc, out_m, half_n, N, constant, count_ptr, sums_ptr,
                          STATS)  # fmt: skip
        else:
            codes = codes_desc.load([out_m, out_n])
            _masked_store(acc, codes, out_desc, out_m, out_n, N, constant, count_ptr, sums_ptr,
                          STATS)  # fmt: skip


def _programs(device: torch.device) -> int:
    """Programs of the persistent kernel: one per SM (4 on the CPU interpreter, so that each
    walks several tiles)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def masked_grad(
    residual: Tensor,
    atoms: Tensor,
    codes: Tensor,
    constant: float,
    out: Tensor | None = None,
    stats: tuple[Tensor, Tensor] | None = None,
    tma: bool = False,
    persistent: bool | None = False,
) -> Tensor:
    """``where(codes > 0, residual @ atoms + constant, 0)`` in ``codes``' dtype, in one kernel.

    ``residual`` (B, d), ``atoms`` (d, L) — or the (d, L) view of a contiguous (L, d) tensor,
    whose K-major tiles the tensor cores may read faster — ``codes`` (B, L). With ``stats =
    (count, sums)`` (an int32 tensor of one element and an fp32 tensor of L), adds to them the
    number of active codes and each latent's sum of codes over the batch (a latent fired where
    its sum is > 0). ``tma``: move tiles with the TMA engine (Hopper and later; contiguous rows
    with 16-byte aligned strides); ``persistent`` (with ``tma``): one program per SM walking the
    tiles, so that epilogues overlap the next loads; ``None``: whichever of the two kernels runs
    faster, timed once per shape on scratch outputs (``persistent_choices``)."""
    batch, dim = residual.shape
    latents = atoms.shape[1]
    if atoms.shape[0] != dim or codes.shape != (batch, latents):
        raise ValueError(f"shapes {residual.shape} @ {atoms.shape} vs codes {codes.shape}")
    out = torch.empty_like(codes) if out is None else out
    count, sums = stats if stats is not None else (out, out)  # unused when STATS is off
    precision = "ieee" if residual.dtype == torch.float32 else "tf32"

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(batch, meta["BLOCK_M"]) * triton.cdiv(latents, meta["BLOCK_N"]),)

    flags = {"STATS": stats is not None, "PRECISION": precision}
    sizes = (batch, latents, dim, constant)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # atoms may be a (d, L) view of a contiguous (L, d) tensor: K-major tiles, as wgmma likes
        k_major = atoms.stride(0) == 1 and atoms.stride(1) != 1
        right = atoms.T if k_major else atoms
        if persistent is None:
            key = (residual.device, residual.dtype, batch, dim, latents, k_major, stats is not None)
            persistent = _PERSISTENT.get(key)
            if persistent is None:
                persistent = _PERSISTENT[key] = _persistent_is_faster(
                    residual, atoms, codes, constant, stats
                )
        descs = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (residual, right, codes, out)]
        if persistent:
            programs = _programs(residual.device)

            def walkers(meta: dict[str, int]) -> tuple[int]:
                return (min(programs, grid(meta)[0]),)

            _masked_grad_persistent_kernel[walkers](
                *descs, count, sums, *sizes, B_KMAJOR=k_major, PROGRAMS=programs, **flags
            )
            return out
        _masked_grad_tma_kernel[grid](*descs, count, sums, *sizes, B_KMAJOR=k_major, **flags)
        return out
    if persistent:
        raise ValueError("masked_grad: persistent needs tma")
    _masked_grad_kernel[grid](
        residual, atoms, codes, out, count, sums, *sizes,
        *residual.stride(), *atoms.stride(), *codes.stride(), *out.stride(), **flags,
    )  # fmt: skip
    return out


_PERSISTENT: dict[tuple, bool] = {}  # masked_grad(persistent=None)'s choices per shape


def _persistent_is_faster(
    residual: Tensor, atoms: Tensor, codes: Tensor, constant: float, stats: tuple | None
) -> bool:
    """Time masked_grad's TMA kernel and its persistent form (each autotuned first) on scratch
    outputs, so the caller's statistics are untouched."""
    out = torch.empty_like(codes)
    scratch = tuple(torch.zeros_like(t) for t in stats) if stats is not None else None
    times = {}
    for persistent in (False, True):

        def run(persistent: bool = persistent) -> None:
            masked_grad(residual, atoms, codes, constant, out, scratch, True, persistent)

        times[persistent] = _time(run, residual.device)
    return times[True] < times[False]


def _time(run: Callable[[], None], device: torch.device) -> float:
    """Seconds (or ms: only comparisons matter) per call of ``run`` after warming it up."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(run, warmup=10, rep=40))
    run()
    started = time.perf_counter()
    for _ in range(2):
        run()
    return time.perf_counter() - started


def persistent_choices() -> dict[str, bool]:
    """masked_grad(persistent=None)'s choices so far: shape → persistent kernel (the bench)."""
    return {
        f"{dtype} {batch}x{dim}x{latents}{' k-major' if k_major else ''}"
        f"{' stats' if stats else ''}": choice
        for (_, dtype, batch, dim, latents, k_major, stats), choice in _PERSISTENT.items()
    }


def autotune_timings() -> dict[str, dict[str, float]]:
    """The masked-gradient kernels' autotuning results so far: config → ms (for the bench)."""
    result = {}
    kernels = (
        ("pointer", _masked_grad_kernel),
        ("tma", _masked_grad_tma_kernel),
        ("persistent", _masked_grad_persistent_kernel),
    )
    for name, kernel in kernels:
        timings = getattr(kernel, "configs_timings", None) or {}
        result[name] = {
            str(c): float(t[0] if isinstance(t, list) else t) for c, t in timings.items()
        }
    return result


@triton.jit
def _adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, low_ptr, sumsq_ptr, step_ptr,
    rows, cols, lr, beta1, beta2, eps,
    LOW: tl.constexpr, SUMSQ: tl.constexpr, AXIS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # torch.optim.Adam's update, term for term: m ← lerp(m, g, 1−β1), v ← β2 v + (1−β2) g²,
    # p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps).
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    offsets = r[:, None] * cols + c[None, :]
    t = tl.load(step_ptr)
    correction1 = 1.0 - tl.exp2(t * tl.log2(beta1))
    correction2_sqrt = tl.sqrt(1.0 - tl.exp2(t * tl.log2(beta2)))
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / correction1) * m / (tl.sqrt(v) / correction2_sqrt + eps)
    tl.store(p_ptr + offsets, p, mask=inside)
    tl.store(m_ptr + offsets, m, mask=inside)
    tl.store(v_ptr + offsets, v, mask=inside)
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
    for t in (param, grad, exp_avg, exp_avg_sq, *(x for x in (low,) if x is not None)):
        if t.shape != param.shape or not t.is_contiguous():
            raise ValueError(f"adam_: {tuple(t.shape)} is not a contiguous {tuple(param.shape)}")
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
    t = tl.load(step_ptr)
    correction1 = 1.0 - tl.exp2(t * tl.log2(beta1))
    correction2_sqrt = tl.sqrt(1.0 - tl.exp2(t * tl.log2(beta2)))
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
    m = m + (1.0 - beta1) * (g - m)  # as _adam_kernel
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / correction1) * m / (tl.sqrt(v) / correction2_sqrt + eps)
    tl.store(m_ptr + offsets, m, mask=inside)
    tl.store(v_ptr + offsets, v, mask=inside)
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
    for t in (grad, exp_avg, exp_avg_sq, low):
        if t.shape != atoms.shape or not t.is_contiguous() or not atoms.is_contiguous():
            raise ValueError(f"adam_atoms_: {tuple(t.shape)} is not a contiguous {(rows, cols)}")
    dim, count = (rows, cols) if axis == 0 else (cols, rows)
    block_d = triton.next_power_of_2(dim)
    # Atoms in columns, d = 768: programs read 16-byte row segments, the neighbouring
    # program the rest of each 32-byte sector (from L2: the two run side by side).
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
    # _adam_kernel's update of one chunk of a tile whose gradient g is already in registers.
    rm = off_m + tl.arange(0, g.shape[0])
    rn = off_n + tl.arange(0, g.shape[1])
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    offsets = rm[:, None] * N + rn[None, :]
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0)
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / correction1) * m / (tl.sqrt(v) / correction2_sqrt + eps)
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
    off_m, off_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = at_desc.load([k, off_m]).T
        b = b_desc.load([k, off_n])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    t = tl.load(step_ptr)
    c1 = 1.0 - tl.exp2(t * tl.log2(beta1))
    c2 = tl.sqrt(1.0 - tl.exp2(t * tl.log2(beta2)))
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
    for t in (param, exp_avg, exp_avg_sq, low):
        if t.shape != (rows, cols) or not t.is_contiguous():
            raise ValueError(f"matmul_adam_: {tuple(t.shape)} is not a contiguous {(rows, cols)}")
    precision = "ieee" if at.dtype == torch.float32 else "tf32"
    descs = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (at, b)]

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"]),)

    _matmul_adam_kernel[grid](
        *descs, param, exp_avg, exp_avg_sq, low, step, rows, cols, depth,
        lr, betas[0], betas[1], eps, PRECISION=precision,
    )  # fmt: skip


def forward_residual(
    x: Tensor, encoder_low: Tensor, atoms_low: Tensor, zero_bias: Tensor
) -> tuple[Tensor, Tensor, float]:
    """The SAE's forward pass and the scaled residual, token-major, with the elementwise work in
    cuBLASLt epilogues: codes = ReLU(x·Wᵀ) (B, L), and residual = scale·(codes·Dᵀ − x) (B, d)
    where scale = 2/(d·B) makes it ∂mse/∂(codes·Dᵀ). Returns (codes, residual, scale)."""
    batch, dim = x.shape
    codes = torch._addmm_activation(zero_bias, x, encoder_low.T)
    scale = 2.0 / (dim * batch)
    residual = torch.addmm(x, codes, atoms_low.T, beta=-scale, alpha=scale)
    return codes, residual, scale


def residual_mse(residual: Tensor, scale: float) -> Tensor:
    """mean((codes·Dᵀ − x)²) from ``forward_residual``'s scaled residual (one small pass)."""
    return residual.float().square().sum() / (scale * scale * residual.numel())


def tma_ok(device: torch.device, *row_bytes: int) -> bool:
    """Whether the TMA kernel applies: a Hopper-or-later GPU and rows of 16-byte multiples
    (freshly allocated tensors start aligned)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        return False
    return all(n % 16 == 0 for n in row_bytes)


class SAETrainer:
    """``train.Step``'s hand-written SAE step (``encoder.fast_step``) as fused kernels, for a
    ReLU SAE without encoder bias on a GPU with ``device.autocast=bf16``: bf16 GEMMs on copies of
    the fp32 weights that this module's Adam rewrites as it updates them, the code gradient and
    the train statistics from ``masked_grad``, and the Adam update on the framework optimiser's
    own moments and step counts (so checkpoints and resumption are unchanged).

    It keeps a normalised decoder's atoms at unit norm itself (``adam_atoms_``: renormalised in
    the Adam pass, so the caller must not renormalise before each step). When the weights change
    outside it (a checkpoint loaded, an evaluation's ``renormalise_``: torch counts in-place
    writes in ``Tensor._version``, its kernels' writes are not counted), the next step first
    renormalises and refreshes the copies. It takes the same steps as the framework's autograd
    step (tests/test_fused.py checks it in fp32 through Triton's interpreter); ``low`` is the
    GEMMs' dtype."""

    def __init__(self, weight: Tensor, decoder, optimiser, low: torch.dtype) -> None:
        # decoder: sparsegap.decoder.Decoder (weight (R, d, L), learned, normalise, renormalise_)
        self.weight, self.decoder, self.low, self.optimiser = weight, decoder, low, optimiser
        self.atoms = decoder.weight
        self.learned = decoder.learned
        self.normalised = decoder.learned and decoder.normalise
        index = {id(p): i for i, p in enumerate(optimiser.params)}
        self.slots = [index[id(weight)]] + ([index[id(self.atoms)]] if self.learned else [])
        replicas, latents, _ = weight.shape
        self.weight_low = torch.empty_like(weight, dtype=low)
        self.atoms_low = torch.empty_like(self.atoms, dtype=low)
        self.seen: tuple[int, int] | None = None  # the weights' versions the copies match
        self.zero_bias = torch.zeros(latents, device=weight.device, dtype=low)
        self.count = torch.zeros(replicas, 1, device=weight.device, dtype=torch.int32)
        self.sums = torch.zeros(replicas, latents, device=weight.device)
        size = torch.finfo(low).bits // 8
        self.tma = tma_ok(weight.device, weight.shape[2] * size, latents * size)
        # masked_grad's TMA kernel or its persistent form: None times both once (per shape)
        self.persistent: bool | None = None
        # The encoder's Adam in its gradient GEMM's epilogue (matmul_adam_, TMA only): off until
        # `make bench-gpu` measures it faster than cuBLAS's GEMM + adam_ on an H100.
        self.adam_in_gemm = False

    def _refresh(self) -> None:
        """Renormalise and copy the weights where they changed since this trainer last wrote."""
        versions = (self.weight._version, self.atoms._version)
        if versions == self.seen:
            return
        self.decoder.renormalise_()
        self.weight_low.copy_(self.weight)
        self.atoms_low.copy_(self.atoms)
        self.seen = (self.weight._version, self.atoms._version)

    @torch.no_grad()
    def __call__(
        self, x: Tensor, l1_coeff: float, track: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """One Adam step of every replica on the batch ``x`` (d, B). With ``track``, returns per
        replica (mse, mean code, mean L0) and which latents fired (R, L)."""
        self._refresh()
        opt = self.optimiser
        opt.t += 1
        torch._foreach_add_(opt.steps, 1)
        betas, eps = (opt.beta1, opt.beta2), opt.eps
        xt = x.T.to(self.low).contiguous()  # (B, d)
        batch = xt.shape[0]
        replicas, latents, _ = self.weight.shape
        constant = l1_coeff / (latents * batch)
        mse = torch.zeros(replicas, device=xt.device)
        if track:
            self.count.zero_()
            self.sums.zero_()
        for r in range(replicas):
            encoder_low, atoms_low = self.weight_low[r], self.atoms_low[r]
            codes, residual, scale = forward_residual(xt, encoder_low, atoms_low, self.zero_bias)
            stats = (self.count[r], self.sums[r]) if track else None
            grad_pre = masked_grad(
                residual, atoms_low, codes, constant, stats=stats, tma=self.tma,
                persistent=self.persistent if self.tma else False,
            )  # fmt: skip
            # The atoms' update last: it rewrites atoms_low, which the code gradient reads.
            i = self.slots[0]
            moments = opt.exp_avg[i][r], opt.exp_avg_sq[i][r]
            if self.adam_in_gemm and self.tma:
                matmul_adam_(grad_pre, xt, self.weight[r], *moments, opt.steps[i], opt.lr,
                             encoder_low, betas, eps)  # fmt: skip
            else:
                adam_(self.weight[r], grad_pre.T @ xt, *moments, opt.steps[i], opt.lr, betas,
                      eps, low=encoder_low)  # fmt: skip
            if self.learned:
                i = self.slots[1]
                update = adam_atoms_ if self.normalised else adam_
                update(self.atoms[r], residual.T @ codes, opt.exp_avg[i][r],
                       opt.exp_avg_sq[i][r], opt.steps[i], opt.lr, betas=betas, eps=eps,
                       low=atoms_low)  # fmt: skip
            if track:
                mse[r] = residual_mse(residual, scale)
        if not track:
            return None
        l1 = self.sums.sum(dim=1) / (latents * batch)
        l0 = self.count[:, 0].float() / batch
        return mse, l1, l0, self.sums > 0
