"""The code-gradient GEMM of the fused SAE step, ``masked_grad``: ``where(codes > 0, r·D + c, 0)``
with the train statistics in its epilogue, as three kernels (pointer loads; TMA loads, one
program per tile; TMA loads, one program per SM walking the tiles) and the timed choice between
the last two. ``grouped_tile`` is the tile order the package's GEMM kernels share."""

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


def fits_shared_memory(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list:
    """The autotuner's early pruning: drop the configurations whose tiles cannot fit the GPU's
    shared memory (each would be compiled only to fail at launch). Tensor-core GEMMs only:
    fp32 "ieee" dots run on the CUDA cores with their operands staged otherwise (on an H100,
    pruned by this estimate, the pointer kernel kept only fp32 configurations that failed at
    launch, and one it dropped runs), so fp32 configurations all stay."""
    first = next(iter(named_args.values()))  # a tensor or a TensorDescriptor over one
    tensor = getattr(first, "base", first)
    if not isinstance(tensor, Tensor) or tensor.device.type != "cuda":
        return configs  # the interpreter: nothing to compile
    if kwargs.get("PRECISION") == "ieee":
        return configs
    limit = torch.cuda.get_device_properties(tensor.device).shared_memory_per_block_optin
    # The code-gradient TMA kernels stage their epilogue tiles; pointer loads are counted with
    # one buffer fewer than num_stages (a lower bound; the TMA pipelines hold num_stages).
    staged = "codes_desc" in named_args
    pointer = not any(name.endswith("_desc") for name in named_args)
    return fitting(configs, tensor.element_size(), limit, staged, pointer)


def fitting(
    configs: list[triton.Config], size: int, limit: int, staged: bool, pointer: bool
) -> list[triton.Config]:
    """The configurations whose estimated shared memory fits ``limit`` bytes: the main loop's
    buffers (A tile + B tile, ``size``-byte elements) and, if ``staged``, the epilogue tile. The
    estimate only under-counts what the compiler allocates, so nothing that fits is dropped;
    where none fits, the smallest is kept (the autotuner needs one)."""

    def needed(config: triton.Config) -> int:
        m, n, k = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        buffers = max(1, config.num_stages - (1 if pointer else 0))
        tile = m * n // (2 if config.kwargs.get("SUBTILE") else 1) if staged else 0
        return (buffers * (m * k + k * n) + tile) * size

    kept = [c for c in configs if needed(c) <= limit]
    return kept or [min(configs, key=needed)]


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
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
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
    prune_configs_by={"early_config_prune": fits_shared_memory},
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
    off_m, off_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    prune_configs_by={"early_config_prune": fits_shared_memory},
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
    off_m, off_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    prune_configs_by={"early_config_prune": fits_shared_memory},
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
        off_m, off_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = a_desc.load([off_m, k])
            b = b_desc.load([off_n, k]).T if B_KMAJOR else b_desc.load([k, off_n])
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        tile_out += PROGRAMS
        out_m, out_n = grouped_tile(tile_out, M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    faster, timed once per shape on scratch outputs (``persistent_choices``; without ``tma``,
    the pointer kernel)."""
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
