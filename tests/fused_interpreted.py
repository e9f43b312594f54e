"""Run by tests/test_fused.py in a subprocess with TRITON_INTERPRET=1 (Triton's CPU interpreter
must be chosen before the kernels are defined): the fused-step kernels of ``sparsegap.fused`` on
CPU tensors in fp32 against torch, printed as one JSON object of errors. (The interpreter's bf16
``tl.dot`` is wrong, so bf16 is checked only on a GPU: tests/test_fused.py's gpu test and
`make bench-gpu`.)"""

from __future__ import annotations

import json

import torch

from sparsegap import bench_gpu, fused


def masked_grad_errors(tma: bool) -> dict[str, float]:
    errors = {}
    gen = torch.Generator().manual_seed(0)
    # One shape that the interpreter's 32 × 32 × 16 tiles divide, one that they do not.
    for batch, dim, latents in ((64, 32, 128), (72, 48, 304)):
        residual = torch.randn(batch, dim, generator=gen)
        atoms = torch.randn(dim, latents, generator=gen)
        codes = torch.randn(batch, latents, generator=gen).relu_()
        fired = torch.zeros(latents, dtype=torch.int32)
        sums = torch.zeros(latents)
        out = fused.masked_grad(residual, atoms, codes, 0.25, stats=(fired, sums), tma=tma)
        reference = torch.where(codes > 0, residual @ atoms + 0.25, 0.0)
        name = f"{'tma' if tma else 'pointer'} {batch}x{dim}x{latents}"
        errors[f"grad {name}"] = (out - reference).abs().max().item()
        errors[f"fired {name}"] = (fired - (codes > 0).sum(dim=0)).abs().max().item()
        errors[f"sums {name}"] = (sums - codes.sum(dim=0)).abs().max().item()
        errors[f"zeros {name}"] = float(((codes == 0) & (out != 0)).sum().item())
    return errors


def adam_errors() -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    param = torch.randn(40, 300, generator=gen)
    reference = param.clone().requires_grad_()
    optimiser = torch.optim.Adam([reference], lr=1e-2)
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    step = torch.zeros(())
    low = torch.empty(40, 300, dtype=torch.bfloat16)
    sumsq = torch.zeros(300)
    for i in range(3):
        grad = torch.randn(40, 300, generator=gen) * (i + 1)
        step += 1
        sumsq.zero_()
        fused.adam_(param, grad, exp_avg, exp_avg_sq, step, 1e-2, low=low, column_sumsq=sumsq)
        reference.grad = grad.clone()
        optimiser.step()
    normalised = torch.empty(40, 300, dtype=torch.bfloat16)
    expected_sumsq = (param * param).sum(dim=0)
    fused.renormalise_(param, normalised, sumsq)
    target = reference.detach() / reference.detach().norm(dim=0)
    return {
        "adam sumsq": (sumsq - expected_sumsq).abs().max().item() / expected_sumsq.max().item(),
        "adam+renormalise": (param - target).abs().max().item(),
        "bf16 copy": (normalised.float() - param).abs().max().item(),
    }


def step_errors() -> dict[str, float]:
    shape = dict(bench_gpu.SMALL, dim=32, latents=128, batch=64)
    errors = {}
    for tma in (False, True):
        for name, value in bench_gpu.check_fused_step(shape, torch.device("cpu"), tma=tma).items():
            errors[f"step {'tma' if tma else 'pointer'} {name}"] = value
    return errors


if __name__ == "__main__":
    result = masked_grad_errors(False) | masked_grad_errors(True) | adam_errors() | step_errors()
    print(json.dumps(result))
