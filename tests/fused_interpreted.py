"""Run by tests/test_fused.py in a subprocess with TRITON_INTERPRET=1 (Triton's CPU interpreter
must be chosen before the kernels are defined): the fused-step kernels of
``sparsegap.accel.fused`` on CPU tensors in fp32 against torch, printed as one JSON object of
errors. (The interpreter's bf16 ``tl.dot`` is wrong, so bf16 is checked only on a GPU:
tests/test_fused.py's gpu test and `make bench-gpu`.)"""

from __future__ import annotations

import json

import torch

from sparsegap.accel import fused
from sparsegap.bench import gpu as bench_gpu


def masked_grad_errors(tma: bool, persistent: bool | None = False) -> dict[str, float]:
    """Errors of masked_grad against torch; persistent=None: the timed choice, whose trial runs
    must not add to the statistics."""
    errors = {}
    gen = torch.Generator().manual_seed(0)
    # One shape that the interpreter's 32 × 32 × 16 tiles divide, one that they do not.
    for batch, dim, latents in ((64, 32, 128), (72, 48, 304)):
        residual = torch.randn(batch, dim, generator=gen)
        atoms = torch.randn(dim, latents, generator=gen)
        codes = torch.randn(batch, latents, generator=gen).relu_()
        reference = torch.where(codes > 0, residual @ atoms + 0.25, 0.0)
        # The atoms as given (d, L), and as the (d, L) view of an (L, d) tensor (K-major).
        for layout, right in (("", atoms), (" k-major", atoms.T.contiguous().T)):
            count = torch.zeros(1, dtype=torch.int32)
            sums = torch.zeros(latents)
            out = fused.masked_grad(
                residual, right, codes, 0.25, stats=(count, sums), tma=tma, persistent=persistent
            )
            kernel = {None: "auto", True: "persistent"}.get(persistent, "tma" if tma else "pointer")
            name = f"{kernel}{layout} {batch}x{dim}x{latents}"
            errors[f"grad {name}"] = (out - reference).abs().max().item()
            errors[f"count {name}"] = abs(count.item() - (codes > 0).sum().item())
            errors[f"fired {name}"] = float(((sums > 0) != (codes > 0).any(dim=0)).sum())
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
        fused.adam_(param, grad, exp_avg, exp_avg_sq, step, 1e-2, low=low, sumsq=sumsq)
        reference.grad = grad.clone()
        optimiser.step()
    normalised = torch.empty(40, 300, dtype=torch.bfloat16)
    expected_sumsq = (param * param).sum(dim=0)
    fused.renormalise_(param, normalised, sumsq)
    target = reference.detach() / reference.detach().norm(dim=0)
    errors = {
        "adam sumsq": (sumsq - expected_sumsq).abs().max().item() / expected_sumsq.max().item(),
        "adam+renormalise": (param - target).abs().max().item(),
        "bf16 copy": (normalised.float() - param).abs().max().item(),
    }
    # Atoms in rows (axis=1): one Adam step, then the rows renormalised.
    rows = torch.randn(300, 40, generator=gen)
    reference = rows.clone().requires_grad_()
    optimiser = torch.optim.Adam([reference], lr=1e-2)
    grad = torch.randn(300, 40, generator=gen)
    row_sumsq = torch.zeros(300)
    moments = torch.zeros_like(rows), torch.zeros_like(rows)
    fused.adam_(rows, grad, *moments, torch.ones(()), 1e-2, sumsq=row_sumsq, axis=1)
    reference.grad = grad.clone()
    optimiser.step()
    fused.renormalise_(rows, torch.empty(300, 40, dtype=torch.bfloat16), row_sumsq, axis=1)
    target = reference.detach() / reference.detach().norm(dim=1, keepdim=True)
    errors["adam+renormalise rows"] = (rows - target).abs().max().item()
    return errors | adam_atoms_errors()


def adam_atoms_errors() -> dict[str, float]:
    """``adam_atoms_`` (Adam and the renormalisation in one pass, atoms in rows) against torch's
    Adam followed by the framework's renormalisation, 3 steps; the second shape's atoms are too
    long for one program (its two-kernel path)."""
    gen = torch.Generator().manual_seed(2)
    errors = {}
    for name, shape in (("rows", (300, 40)), ("long rows", (20, 4100))):
        atoms = torch.randn(*shape, generator=gen)
        reference = atoms.clone().requires_grad_()
        optimiser = torch.optim.Adam([reference], lr=1e-2)
        moments = torch.zeros_like(atoms), torch.zeros_like(atoms)
        low = torch.empty_like(atoms, dtype=torch.bfloat16)
        step = torch.zeros(())
        for i in range(3):
            grad = torch.randn(*shape, generator=gen) * (i + 1)
            step += 1
            fused.adam_atoms_(atoms, grad, *moments, step, 1e-2, low)
            reference.grad = grad
            optimiser.step()
            with torch.no_grad():
                reference.div_(reference.norm(dim=1, keepdim=True).clamp_min(1e-12))
        errors[f"adam_atoms {name}"] = (atoms - reference.detach()).abs().max().item()
        errors[f"adam_atoms {name} bf16 copy"] = (low.float() - atoms).abs().max().item()
    return errors


def step_errors() -> dict[str, float]:
    """The bench's fused step (atoms in rows, one-pass Adam) with the pointer and the persistent
    TMA code-gradient kernels, against the framework's steps."""
    shape = dict(bench_gpu.SMALL, dim=32, latents=128, batch=64)
    errors = {}
    for tma in (False, True):
        check = bench_gpu.check_fused_step(shape, torch.device("cpu"), tma=tma)
        for name, value in check.items():
            errors[f"step {'persistent' if tma else 'pointer'} {name}"] = value
    return errors


def trainer_errors(normalise: bool, tma: bool = False) -> dict[str, float]:
    """The framework's Step with ``fused.SAETrainer`` attached (as on a GPU in bf16, here in
    fp32) against the plain Step: 2 replicas, lr and L1 warm-ups, train statistics, and the
    weights changed from outside between steps 3 and 4 (as a checkpoint load would); with
    ``tma``, the code gradient from the TMA kernel or its persistent form (the timed choice)."""
    from sparsegap.model import build
    from sparsegap.step import Step

    shape = dict(bench_gpu.SMALL, dim=32, latents=128, batch=64)
    cpu = torch.device("cpu")
    steps = []
    for attach in (False, True):
        cfg = bench_gpu.framework_config(shape, "sae", "cpu", lr=1e-3, l1_coeff=1e-2)
        cfg.replicas, cfg.lr_warmup_steps, cfg.l1_warmup_steps = 2, 3, 2
        cfg.encoder.normalise_decoder = normalise
        model = build(cfg, cpu)
        x = torch.randn(shape["batch"], shape["dim"], generator=torch.Generator().manual_seed(0))
        step = Step(model, iter([x.T] * 6), track=True)
        if attach:
            assert step.fast is False  # fast_step is off in this config: attach by hand
            step.fused = fused.SAETrainer(
                model.encoder.linear.weight, model.decoder, step.optimiser, torch.float32
            )
            step.fused.tma = tma
        for i in range(6):
            if i == 3:
                with torch.no_grad():
                    model.encoder.linear.weight.mul_(0.9)
                    model.decoder.weight.mul_(1.5)
            step()
        model.decoder.renormalise_()
        steps.append((model, step, step.pop_means()))
    (plain, plain_step, plain_means), (fast, fast_step, fast_means) = steps
    name = "trainer" if normalise else "trainer unnormalised"
    name += " tma" if tma else ""
    errors = {
        f"{name} decoder": (plain.decoder.weight - fast.decoder.weight).abs().max().item(),
        f"{name} encoder": (plain.encoder.linear.weight - fast.encoder.linear.weight)
        .abs()
        .max()
        .item(),
        f"{name} last_fired": float((plain_step.last_fired != fast_step.last_fired).sum()),
        f"{name} adam t": float(plain_step.optimiser.t - fast_step.optimiser.t),
    }
    for term, values in plain_means.items():
        theirs = fast_means[term]
        errors[f"{name} {term}"] = max(
            abs(a - b) / max(abs(a), 1e-12) for a, b in zip(values, theirs, strict=True)
        )
    return errors


if __name__ == "__main__":
    result = masked_grad_errors(False) | masked_grad_errors(True) | masked_grad_errors(True, True)
    result |= masked_grad_errors(True, None)
    result["auto choices"] = len(fused.persistent_choices())
    result |= adam_errors() | step_errors()
    result |= trainer_errors(True) | trainer_errors(False) | trainer_errors(True, True)
    print(json.dumps(result))
