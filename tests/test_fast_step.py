"""``encoder.fast_step`` (on by default): the hand-written forward and backward of the SAE, the
MLP and sparse coding takes autograd's steps (fp32) in every scenario with a reconstruction loss,
runs in bf16, and leaves the cosine loss of known codes to autograd."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, read_metrics

from sparsegap.__main__ import run
from sparsegap.model import build
from sparsegap.step import make_step


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()  # tiny matmuls: threads only add contention
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(overrides: list[str], steps: int = 10):
    model = build(compose_config(overrides))
    step = make_step(model)
    for _ in range(steps):
        step()
    return model, step


@pytest.mark.parametrize(
    ("encoder", "scenario"),
    [
        ("sae", "unknown"),
        ("mlp", "unknown"),
        ("sae", "known_dictionary"),
        ("mlp", "known_dictionary"),
        ("sae_ito", "unknown"),
        ("sparse_coding", "unknown"),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_fast_step_equals_the_autograd_step(encoder, scenario, bias):
    common = [f"encoder={encoder}", f"scenario={scenario}", f"encoder.bias={bias}", "lr=1e-2"]
    fast, fast_step = _train(common)
    slow, slow_step = _train([*common, "encoder.fast_step=false"])
    assert fast_step.fast and not slow_step.fast
    initial = build(compose_config(common)).encoder.state_dict()
    for name, value in slow.encoder.state_dict().items():
        torch.testing.assert_close(fast.encoder.state_dict()[name], value, rtol=1e-4, atol=1e-5)
        assert (value - initial[name]).abs().max() > 1e-3, name  # the steps did move it
    torch.testing.assert_close(fast.decoder.weight, slow.decoder.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder", ["mlp", "sparse_coding"])
def test_fast_step_runs_in_bf16(encoder):
    common = ["encoder.bias=true", f"encoder={encoder}"]
    fp32, _ = _train(common)
    bf16, _ = _train([*common, "device.autocast=bf16"])
    assert bf16.decoder.weight.dtype == torch.float32  # bf16 GEMMs, fp32 master weights
    # the same direction of travel, to bf16 precision
    torch.testing.assert_close(bf16.decoder.weight, fp32.decoder.weight, rtol=0, atol=2e-2)


def test_known_codes_and_importance_weights_take_the_autograd_step():
    assert not _train(["scenario=known_codes"], steps=1)[1].fast
    assert not _train(["data.importance=decay"], steps=1)[1].fast
    assert not _train(["encoder=topk"], steps=1)[1].fast  # no hand-written step


def test_fast_step_logs_the_autograd_run_metrics(tmp_path):
    common = ["steps=20", "eval_every=10"]
    run(compose_config(common), tmp_path / "fast")
    run(compose_config([*common, "encoder.fast_step=false"]), tmp_path / "autograd")
    fast, autograd = read_metrics(tmp_path / "fast")[-1], read_metrics(tmp_path / "autograd")[-1]
    for key in ("loss/total/train", "latent_mcc/test", "dictionary_mcc"):
        assert fast[key]["mean"] == pytest.approx(autograd[key]["mean"], rel=1e-4), key
