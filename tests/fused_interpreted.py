"""Run by tests/test_fused.py in a subprocess with TRITON_INTERPRET=1 (Triton's CPU interpreter
must be chosen before the kernels are defined): the fused-step kernels of ``sparsegap.fused`` on
CPU tensors in fp32 against torch, printed as one JSON object of errors. (The interpreter's bf16
``tl.dot`` is wrong, so bf16 is checked only on a GPU: tests/test_fused.py's gpu test and
`make bench-gpu`.)"""

from __future__ import annotations

import json

import torch

from sparsegap import bench_gpu, fused


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
    return errors | adam_atoms_errors() | matmul_adam_errors()


def adam_atoms_errors() -> dict[str, float]:
    """``adam_atoms_`` (Adam and the renormalisation in one pass) against torch's Adam followed
    by the framework's renormalisation, 3 steps: atoms in columns and in rows, and atoms too long
    for one program (its two-kernel path)."""
    gen = torch.Generator().manual_seed(2)
    errors = {}
    for name, shape, axis in (
        ("columns", (40, 300), 0),
        ("rows", (300, 40), 1),
        ("long rows", (20, 4100), 1),
    ):
        atoms = torch.randn(*shape, generator=gen)
        reference = atoms.clone().requires_grad_()
        optimiser = torch.optim.Adam([reference], lr=1e-2)
        moments = torch.zeros_like(atoms), torch.zeros_like(atoms)
        low = torch.empty_like(atoms, dtype=torch.bfloat16)
        step = torch.zeros(())
        for i in range(3):
            grad = torch.randn(*shape, generator=gen) * (i + 1)
            step += 1
            fused.adam_atoms_(atoms, grad, *moments, step, 1e-2, low, axis=axis)
            reference.grad = grad
            optimiser.step()
            with torch.no_grad():
                reference.div_(reference.norm(dim=axis, keepdim=True).clamp_min(1e-12))
        errors[f"adam_atoms {name}"] = (atoms - reference.detach()).abs().max().item()
        errors[f"adam_atoms {name} bf16 copy"] = (low.float() - atoms).abs().max().item()
    return errors


def matmul_adam_errors() -> dict[str, float]:
    """``matmul_adam_`` (the gradient GEMM with Adam in its epilogue) against torch's GEMM and
    Adam, 3 steps: a shape the interpreter's tiles divide and a ragged one."""
    gen = torch.Generator().manual_seed(3)
    errors = {}
    for depth, rows, cols in ((64, 64, 32), (72, 100, 48)):
        at, b = torch.randn(depth, rows, generator=gen), torch.randn(depth, cols, generator=gen)
        param = torch.randn(rows, cols, generator=gen)
        reference = param.clone().requires_grad_()
        optimiser = torch.optim.Adam([reference], lr=1e-2)
        moments = torch.zeros_like(param), torch.zeros_like(param)
        low = torch.empty_like(param, dtype=torch.bfloat16)
        step = torch.zeros(())
        for i in range(3):
            step += 1
            fused.matmul_adam_(at * (i + 1), b, param, *moments, step, 1e-2, low)
            reference.grad = (at * (i + 1)).T @ b
            optimiser.step()
        name = f"matmul_adam {depth}x{rows}x{cols}"
        errors[name] = (param - reference.detach()).abs().max().item()
        copy_error = (low.float() - param).abs().max() / param.abs().max()
        errors[f"{name} bf16 copy"] = copy_error.item()  # relative: the weights are O(1)
    return errors


def step_errors() -> dict[str, float]:
    shape = dict(bench_gpu.SMALL, dim=32, latents=128, batch=64)
    errors = {}
    # pointer and TMA kernels × atoms in columns or rows; two with the one-pass Adam, one of
    # them with the persistent kernel.
    options = [dict(tma=tma, atom_rows=rows) for tma in (False, True) for rows in (False, True)]
    options += [dict(one_pass=True), dict(tma=True, atom_rows=True, one_pass=True, persistent=True)]
    options += [dict(tma=True, one_pass=True, adam_in_gemm=True)]
    for option in options:
        check = bench_gpu.check_fused_step(shape, torch.device("cpu"), **option)
        kernel = "tma" if option.get("tma") else "pointer"
        label = "persistent" if option.get("persistent") else kernel
        label += " rows" if option.get("atom_rows") else ""
        label += " one-pass" if option.get("one_pass") else ""
        label += " adam-in-gemm" if option.get("adam_in_gemm") else ""
        for name, value in check.items():
            errors[f"step {label} {name}"] = value
    return errors


def trainer_errors(normalise: bool, adam_in_gemm: bool = False) -> dict[str, float]:
    """The framework's Step with ``fused.SAETrainer`` attached (as on a GPU in bf16, here in
    fp32) against the plain Step: 2 replicas, lr and L1 warm-ups, train statistics, and the
    weights changed from outside between steps 3 and 4 (as a checkpoint load would); with
    ``adam_in_gemm``, the encoder's update through matmul_adam_ (TMA kernels)."""
    from sparsegap.train import Step, build

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
            step.fused.tma = step.fused.adam_in_gemm = adam_in_gemm
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
    name += " adam-in-gemm" if adam_in_gemm else ""
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
