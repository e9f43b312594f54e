"""``encoder.fast_step`` (on by default): the hand-written forward and backward of the SAE, the
MLP and sparse coding takes autograd's steps (fp32) in every scenario with a reconstruction loss,
its gradients equal plain autograd's on the loss written out here, it runs in bf16 (close to the
fp32 steps relative to how far they move the weights), and it leaves the cosine loss of known
codes to autograd."""

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


def _state(model) -> dict[str, torch.Tensor]:
    state = {name: value.detach().clone() for name, value in model.encoder.state_dict().items()}
    return state | {"decoder": model.decoder.weight.detach().clone()}


@pytest.mark.parametrize("encoder", ["sae", "mlp", "sparse_coding"])
def test_fast_step_runs_in_bf16(encoder):
    common = [f"encoder={encoder}"] + (["encoder.bias=true"] if encoder != "sparse_coding" else [])
    initial = _state(build(compose_config(common)))
    fp32, _ = _train(common)
    bf16, bf16_step = _train([*common, "device.autocast=bf16"])
    assert bf16_step.fast and bf16_step.autocast
    assert bf16.decoder.weight.dtype == torch.float32  # bf16 GEMMs, fp32 master weights
    # The same steps to bf16 precision: each parameter's distance to the fp32 run is a small
    # fraction of how far the fp32 run moved it (measured: at most 4 %; a step that does
    # nothing is 100 % off). An absolute tolerance would not do: the atoms move by ~0.015.
    fp32_state, bf16_state = _state(fp32), _state(bf16)
    for name, start in initial.items():
        moved = (fp32_state[name] - start).norm()
        error = (bf16_state[name] - fp32_state[name]).norm()
        assert moved > 0, name
        assert error < 0.1 * moved, (name, error.item(), moved.item())


# The hand-written step's gradients against plain autograd on the loss written out here (not
# the framework's loss, whose backward is itself written by hand).
GRADIENT_CASES = [
    ("sae", []),
    ("sae", ["encoder.bias=true"]),
    ("sae_ito", []),
    ("mlp", ["encoder.native=false"]),
    ("mlp", ["encoder.native=false", "encoder.bias=true"]),
    ("mlp", ["encoder.native=true", "encoder.bias=true"]),  # the C++ kernel
    ("sparse_coding", []),
]


@pytest.mark.parametrize(("encoder", "extra"), GRADIENT_CASES)
@pytest.mark.parametrize("atoms_grad", [True, False])
def test_fast_step_gradients_equal_plain_autograd(encoder, extra, atoms_grad):
    l1_coeff = 0.1  # large enough that the L1 term shapes the gradients
    model = build(compose_config([f"encoder={encoder}", *extra, f"l1_coeff={l1_coeff}"]))
    x, encoder_module = model.data.x_train, model.encoder
    atoms = model.decoder.weight.detach().clone().requires_grad_()
    codes = encoder_module(x)
    mse = ((atoms @ codes - x) ** 2).mean(dim=(1, 2))
    l1 = codes.abs().mean(dim=(1, 2))
    (mse + l1_coeff * l1).sum().backward()
    expected = {name: p.grad.clone() for name, p in encoder_module.named_parameters()}
    encoder_module.zero_grad(set_to_none=True)

    fast_mse, fast_l1, fast_codes, grad_atoms = encoder_module.fast_step(
        x, atoms.detach(), l1_coeff, atoms_grad
    )
    torch.testing.assert_close(fast_mse, mse.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast_l1, l1.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast_codes, codes.detach(), rtol=1e-5, atol=1e-6)
    for name, p in encoder_module.named_parameters():
        scale = expected[name].abs().max()
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-5 * scale)
    if atoms_grad:
        scale = atoms.grad.abs().max()
        torch.testing.assert_close(grad_atoms, atoms.grad, rtol=1e-4, atol=1e-5 * scale)
    else:
        assert grad_atoms is None
    if "encoder.native=true" in extra:
        assert encoder_module.native._lib is not None  # the C++ kernel took the step


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
