"""Captured CUDA-graph training (sparsegap/accel/graph.py, ``device.graph``): what runs without a
GPU here (the refusal on the CPU, ``auto``'s plain loop, the block plan, the device-side learning
rate and L1 schedule the graphs replay), and, marked ``gpu``, that captured training takes the
uncaptured loop's steps."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_config, read_metrics, run_cli

from sparsegap.__main__ import run
from sparsegap.accel import graph
from sparsegap.encoders import ENCODERS
from sparsegap.model import build
from sparsegap.step import make_step, runner
from sparsegap.validate import graph_unsupported

WARMUPS = ["lr_warmup_steps=7", "l1_warmup_steps=11"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_graph_on_refuses_on_the_cpu_before_anything_runs(tmp_path):
    result = run_cli(["device=cpu", "device.graph=on", "logger=none"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device.graph=on is invalid")
    assert "device.name=cpu" in lines[0] and "device.graph=auto or off" in lines[0]
    assert not (tmp_path / "outputs").exists()


def test_graph_auto_on_the_cpu_is_the_plain_loop(tmp_path):
    trainer = make_step(build(compose_config(["device.graph=auto"])))
    assert trainer.device_scalars is None
    assert not isinstance(runner(trainer), graph.CapturedSteps)
    for mode in ("auto", "off"):
        run(compose_config([f"device.graph={mode}", *WARMUPS]), tmp_path / mode)
    auto, off = read_metrics(tmp_path / "auto"), read_metrics(tmp_path / "off")
    assert len(auto) == 3 and _without_time(auto) == _without_time(off)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["compile=true"], "compile=true"),
        (["device.autocast=bf16"], "device.autocast=bf16"),
        (["data.stream_batch=64"], "data.stream_batch=64"),
        (["encoder=topk"], "encoder=topk has no capturable step"),
        ([], "device.name=cpu runs on cpu"),
    ],
)
def test_what_cannot_be_captured_says_why(overrides, reason):
    assert reason in graph_unsupported(compose_config(overrides))


def test_the_paper_encoders_are_capturable():
    assert {"sae", "mlp", "sparse_coding", "sae_ito"} <= {
        name for name, cls in ENCODERS.items() if cls.capturable
    }
    assert not ENCODERS["dictionary_learning"].capturable  # it trains itself, on the host


@pytest.mark.parametrize(
    ("steps", "block", "lengths"),
    [(1000, 1000, [1000]), (2500, 1000, [1000, 1000, 500]), (97, 40, [40, 40, 17]),
     (3, 40, [3]), (0, 40, [])],
)  # fmt: skip
def test_plan_takes_every_step_in_whole_blocks_then_the_rest(steps, block, lengths):
    assert graph.plan(steps, block) == lengths
    assert sum(graph.plan(steps, block)) == steps


@pytest.mark.parametrize("times", [0, 1, 3, 4, 50, 1000, 10_000, 10_007])
def test_inference_split_takes_every_iteration_in_blocks_of_about_its_square_root(times):
    eager, block, replays = graph.split(times)
    assert eager + block * replays == times
    assert eager >= min(times, graph.WARMUP_STEPS)  # the warm-up comes first, eagerly
    assert eager < graph.WARMUP_STEPS + block and block == max(1, math.isqrt(times))


def test_inference_is_marked_captured_only_on_cuda():
    model = build(compose_config(["encoder=sparse_coding", "device.graph=auto"]))
    assert not model.encoder.inference.captured  # the CPU: a plain loop


def test_device_scalars_are_the_host_schedule_of_every_step():
    trainer = make_step(build(compose_config(WARMUPS)))
    scalars = graph.DeviceScalars(
        trainer.lr, trainer.lr_warmup, trainer.l1_coeff, trainer.l1_warmup, 0, torch.device("cpu")
    )
    for _ in range(15):  # through both warm-ups and past them
        l1 = float(trainer._ramp())
        lr, l1_device = scalars()
        assert math.isclose(lr.item(), trainer.optimiser.lr, rel_tol=1e-7)
        assert math.isclose(l1_device.item(), l1, rel_tol=1e-7)
        trainer.optimiser.t += 1
    assert lr.item() == pytest.approx(trainer.lr) and l1 == pytest.approx(trainer.l1_coeff)


@pytest.mark.parametrize(
    "overrides",
    [["encoder=sae"], ["encoder=sae", "encoder.fast_step=false"],
     ["encoder=mlp", "encoder.native=false"], ["encoder=mlp", "encoder.fast_step=false"],
     ["encoder=sparse_coding"], ["encoder=sparse_coding", "encoder.fast_step=false"]],
    ids=["sae-hand", "sae-autograd", "mlp-hand", "mlp-autograd", "sc-hand", "sc-autograd"],
)  # fmt: skip
def test_steps_on_device_scalars_are_the_plain_steps(overrides):
    """The code a graph records (learning rate and L1 coefficient as device tensors), run
    eagerly: the same trajectory as the plain loop's, for hand-written and autograd steps."""
    plain, scalar = (build(compose_config([*overrides, *WARMUPS])) for _ in range(2))
    step = make_step(scalar)
    step.device_scalars = graph.DeviceScalars(
        step.lr, step.lr_warmup, step.l1_coeff, step.l1_warmup, 0, scalar.device
    )
    make_step(plain).run(20)
    step.run(20)
    for a, b in zip(plain.encoder.parameters(), scalar.encoder.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(plain.decoder.weight, scalar.decoder.weight)


# ---------------------------------------------------------------- on a CUDA GPU
GPU_CASES = [
    ["encoder=sae"], ["encoder=sae", "encoder.fast_step=false"],
    ["encoder=mlp"], ["encoder=mlp", "encoder.fast_step=false"],
    ["encoder=sparse_coding", "encoder.inference.iterations=50"],
    ["encoder=sparse_coding", "encoder.fast_step=false", "encoder.inference.iterations=50"],
    ["scenario=known_codes", "encoder=mlp"], ["scenario=known_dictionary", "encoder=sae"],
]  # fmt: skip


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("overrides", GPU_CASES, ids=lambda o: "-".join(o).replace("encoder", ""))
def test_captured_training_takes_the_uncaptured_steps(tmp_path, overrides):
    """Blocks of 40 steps between evaluations every 100 (warm-up, whole blocks, the rest) and
    both warm-ups: the same metrics at every evaluation, to float tolerance."""
    common = ["device=cuda", "steps=230", "eval_every=100", "device.graph_steps=40", *WARMUPS]
    for mode in ("on", "off"):
        run(compose_config([*common, *overrides, f"device.graph={mode}"]), tmp_path / mode)
    captured, plain = read_metrics(tmp_path / "on"), read_metrics(tmp_path / "off")
    assert [r["step"] for r in captured] == [0, 100, 200, 230]
    for a, b in zip(_without_time(captured), _without_time(plain), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], dict):
                a_values, b_values = a[key]["replicas"], b[key]["replicas"]
                assert a_values == pytest.approx(b_values, rel=1e-4, abs=1e-5), key


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("iterations", [2, 10, 1000])
@pytest.mark.parametrize("latents", [16, 64], ids=["gram", "residual"])
def test_captured_inference_takes_the_uncaptured_iterations(iterations, latents):
    from sparsegap.config import InferenceConfig
    from sparsegap.inference.adam_log import AdamLog

    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(3, 8, latents, generator=generator).cuda()
    x = torch.randn(8, 256, generator=generator).cuda()
    inference = AdamLog(InferenceConfig(iterations=iterations), l1_coeff=0.01)
    plain = inference(x, atoms)
    inference.captured = True
    torch.testing.assert_close(inference(x, atoms), plain, rtol=1e-5, atol=1e-7)
