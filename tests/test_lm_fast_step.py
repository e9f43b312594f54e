"""``encoder.fast_step``: the SAE's hand-written forward and backward takes the autograd step's
steps (fp32), runs in bf16, and is refused where the decoder is not learned."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, read_metrics

from sparsegap.__main__ import run
from sparsegap.config import ConfigError, validate
from sparsegap.train import build, make_step


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()  # tiny matmuls: threads only add contention
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fast_step_equals_the_autograd_step_and_runs_in_bf16():
    configs = [["encoder.bias=true", f"encoder.fast_step={fast}"] for fast in (False, True)]
    configs.append(["encoder.bias=true", "encoder.fast_step=true", "device.autocast=bf16"])
    models = [build(compose_config(c)) for c in configs]
    initial = models[0].decoder.weight.detach().clone()
    steps = [make_step(model) for model in models]
    for _ in range(10):
        for step in steps:
            step()
    slow, fast, bf16 = models
    assert fast.decoder.weight.grad is not None  # the fast path set the gradients itself
    torch.testing.assert_close(fast.decoder.weight, slow.decoder.weight, rtol=1e-4, atol=1e-5)
    for name, value in slow.encoder.state_dict().items():
        torch.testing.assert_close(fast.encoder.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert (slow.decoder.weight - initial).abs().max() > 1e-3  # the steps did move it
    # bf16 GEMMs: the same direction of travel, to bf16 precision
    torch.testing.assert_close(bf16.decoder.weight, slow.decoder.weight, rtol=0, atol=2e-2)


def test_fast_step_logs_the_autograd_run_metrics(tmp_path):
    common = ["steps=20", "eval_every=10"]
    run(compose_config([*common, "encoder.fast_step=true"]), tmp_path / "fast")
    run(compose_config(common), tmp_path / "autograd")
    fast, autograd = read_metrics(tmp_path / "fast")[-1], read_metrics(tmp_path / "autograd")[-1]
    for key in ("loss/total/train", "latent_mcc/test", "dictionary_mcc"):
        assert fast[key]["mean"] == pytest.approx(autograd[key]["mean"], rel=1e-4), key


def test_fast_step_needs_a_learned_decoder():
    with pytest.raises(ConfigError, match=r"encoder.fast_step=True is invalid: needs scenario"):
        validate(compose_config(["scenario=known_dictionary", "encoder.fast_step=true"]))
