"""The fused SAE step's Triton kernels (sparsegap.accel.fused): on CPU through Triton's interpreter
(fp32, in a subprocess: the interpreter is chosen when the kernels are defined), and in bf16 on a
CUDA GPU (`make test-gpu`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton ships for Linux x86-64 only; `make test` installs it there (CUDA builds of torch bring it).
pytestmark = pytest.mark.skipif(
    (platform.system(), platform.machine()) != ("Linux", "x86_64"),
    reason="Triton has no wheels for this platform",
)


@pytest.fixture(scope="module")
def interpreted() -> dict[str, float]:
    script = Path(__file__).with_name("fused_interpreted.py")
    # The repository first on the path: sparsegap imports without an installed copy too.
    path = [str(script.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_masked_grad_equals_torch_with_its_statistics(interpreted):
    grads = {k: v for k, v in interpreted.items() if k.startswith("grad ")}
    # pointer, TMA and persistent TMA kernels, and the timed choice between the last two × atoms
    # (d, L) or K-major × tile-divisible and ragged shapes (persistent: 4 programs walking 8 and
    # 30 tiles); the choice is made once per shape and layout, on scratch outputs
    assert len(grads) == 16
    assert interpreted["auto choices"] == 4
    assert max(grads.values()) < 1e-4, grads
    counts = {k: v for k, v in interpreted.items() if k.startswith(("count ", "fired ", "zeros "))}
    assert len(counts) == 48
    # exact: the active codes' count, which latents fired (sum > 0), inactive codes stay 0
    assert max(counts.values()) == 0, counts
    sums = {k: v for k, v in interpreted.items() if k.startswith("sums ")}
    assert max(sums.values()) < 1e-4, sums


def test_adam_kernel_is_torch_adam_and_keeps_the_atom_norms(interpreted):
    assert interpreted["adam+renormalise"] < 1e-6
    assert interpreted["adam+renormalise rows"] < 1e-6
    assert interpreted["adam sumsq"] < 1e-6
    assert 0 < interpreted["bf16 copy"] < 1e-2  # a real bf16 rounding, of the renormalised atoms


def test_adam_with_the_renormalisation_in_one_pass(interpreted):
    for layout in ("rows", "long rows"):  # the second: the two-kernel path
        assert interpreted[f"adam_atoms {layout}"] < 1e-6, layout
        assert 0 < interpreted[f"adam_atoms {layout} bf16 copy"] < 1e-2, layout


def test_fused_step_takes_the_framework_steps(interpreted):
    steps = {k: v for k, v in interpreted.items() if k.startswith("step ")}
    # the pointer and the persistent TMA kernel × decoder, mean MSE and mean L0
    assert len(steps) == 6
    assert max(steps.values()) < 1e-5, steps


@pytest.mark.parametrize("name", ["trainer", "trainer unnormalised", "trainer tma"])
def test_framework_step_with_the_fused_trainer_equals_the_plain_step(interpreted, name):
    # 2 replicas, lr and L1 warm-ups, 6 steps, the weights changed from outside after 3 (the
    # trainer must renormalise and refresh its copies): weights, Adam's count, tracked means,
    # dead latents; with the decoder kept at unit norm (in the Adam pass) and without, and with
    # the TMA code-gradient kernels.
    trainer = {k[len(name) + 1 :]: v for k, v in interpreted.items() if k.startswith(name + " ")}
    if name == "trainer":
        other = ("unnormalised ", "tma ")
        trainer = {k: v for k, v in trainer.items() if not k.startswith(other)}
    assert {"decoder", "encoder", "l0/train", "loss/mse/train"} <= trainer.keys()
    assert max(trainer.values()) < 1e-5, trainer
    assert trainer["last_fired"] == 0 and trainer["adam t"] == 0


def test_the_fused_trainer_is_for_gpus_only():
    from sparsegap.bench import gpu as bench_gpu

    trainer, _ = bench_gpu.framework_step(
        bench_gpu.SMALL, "sae", torch.device("cpu"), autocast="bf16", fast_step=True
    )
    assert trainer.fast and trainer.fused is None  # on CPU: the plain hand-written step


@pytest.mark.gpu
def test_framework_uses_the_fused_trainer_on_a_gpu():
    from sparsegap.bench import gpu as bench_gpu

    device = torch.device("cuda")
    runs = {}
    for fast in (False, True):
        trainer, _ = bench_gpu.framework_step(
            bench_gpu.SMALL, "sae", device, autocast="bf16", fast_step=fast, lr=1e-3
        )
        assert (trainer.fused is not None) == fast
        for _ in range(20):
            trainer()
        runs[fast] = trainer.pop_means()["loss/mse/train"][0]
    assert abs(runs[True] - runs[False]) / runs[False] < 0.05, runs


@pytest.mark.gpu
def test_fused_step_in_bf16_on_a_gpu():
    from sparsegap.bench import gpu as bench_gpu

    device = torch.device("cuda")
    assert bench_gpu.check_masked_grad(bench_gpu.FULL, device) < 2e-2
    for options in ({"tma": False}, {}):  # the pointer kernel, and the device's choice
        diffs = bench_gpu.check_fused_step(bench_gpu.SMALL, device, **options)
        assert max(diffs.values()) < 1e-4, (options, diffs)
    shape = bench_gpu.SMALL
    W = (torch.rand(shape["latents"], shape["dim"], device=device) * 2 - 1) / shape["dim"] ** 0.5
    D = torch.randn(shape["dim"], shape["latents"], device=device)
    x = torch.randn(shape["batch"], shape["dim"], device=device)
    plain = bench_gpu.FusedSAEStep(W, D, x.T, 1e-3, 1e-3)
    inner = bench_gpu.FusedSAEStep(W, D, x.T, 1e-3, 1e-3)
    graphed = bench_gpu.CUDAGraphed(inner)
    for _ in range(3):
        plain()
    graphed()  # the graph was captured after 3 warm-up steps: 4 steps in all
    plain()
    torch.cuda.synchronize()
    assert (plain.decoder() - inner.decoder()).abs().max() < 1e-2


def test_autotuning_skips_tiles_that_cannot_fit_shared_memory():
    from sparsegap.accel.fused.code_grad import _configs, fitting

    def shapes(configs):
        return {
            (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages,
             c.kwargs.get("SUBTILE"))
            for c in configs
        }  # fmt: skip

    h100 = 232_448  # bytes a block may opt in to
    persistent = _configs(tma=True, persistent=True)
    kept = shapes(fitting(persistent, 2, h100, staged=True, pointer=False))
    # bf16, 4 stages of 128×64 + 64×256 tiles (192 KiB) + the whole 128×256 epilogue tile
    # (64 KiB) cannot fit; with the epilogue in halves (32 KiB) it can
    assert (128, 256, 64, 4, False) not in kept and (128, 256, 64, 4, True) in kept
    assert len(kept) < len(shapes(persistent))
    # fp32 doubles every tile: 3 TMA stages of 128×64 + 64×256 (288 KiB) cannot fit, but the
    # pointer kernel's 2 buffers for the same 3 stages (192 KiB) can
    tma = _configs(tma=True)
    assert (128, 256, 64, 3, None) not in shapes(fitting(tma, 4, h100, staged=False, pointer=False))
    assert (128, 256, 64, 3, None) in shapes(fitting(tma, 4, h100, staged=False, pointer=True))
    # nothing fits: the smallest configuration is kept, so the autotuner still has one
    (only,) = fitting(tma, 4, 1024, staged=True, pointer=False)
    # 4 stages × (128×64 + 64×128) elements: the fewest of the list
    assert shapes([only]) == {(128, 128, 64, 4, None)}
