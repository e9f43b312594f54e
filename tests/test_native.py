"""``sparsegap.accel.native``: the MLP's fused C++ training step takes autograd's step (forward,
reconstruction loss, backward) at every shape its tiles have edges in, is deterministic, is built
once into its cache, and gives way to the torch step, with a reason, where it cannot run."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from helpers import compose_config

from sparsegap.accel.native import build
from sparsegap.accel.native.build import NativeUnavailable, library
from sparsegap.accel.native.mlp_step import MAX_LATENTS, NativeMLPStep
from sparsegap.encoders.layers import ReplicaLinear, replica_generators
from sparsegap.model import build as build_model
from sparsegap.step import make_step


def _layers(replicas: int, dim: int, hidden: int, latents: int, bias: bool):
    gens = replica_generators(0, replicas)
    return (
        ReplicaLinear(dim, hidden, gens, bias=bias),
        ReplicaLinear(hidden, latents, gens, bias=bias),
    )


def _autograd(x, first, second, atoms, l1_coeff):
    """The reference: the same loss as accel.reconstruction, through autograd."""
    params = [
        p.detach().clone().requires_grad_() for p in (*first.parameters(), *second.parameters())
    ]
    atoms = atoms.clone().requires_grad_()
    w1, *rest = params
    b1 = rest.pop(0) if first.bias is not None else None
    w2 = rest.pop(0)
    b2 = rest.pop(0) if second.bias is not None else None
    h = w1 @ x + (0 if b1 is None else b1)
    codes = (w2 @ h.relu() + (0 if b2 is None else b2)).relu()
    mse = (atoms @ codes - x).square().mean(dim=(1, 2))
    l1 = codes.mean(dim=(1, 2))
    (mse + l1_coeff * l1).sum().backward()
    return codes.detach(), mse.detach(), l1.detach(), [p.grad for p in params], atoms.grad


SHAPES = [
    # replicas, M, hidden, N, samples: the paper's MLP-256 and MLP-32, then edges of every tile
    (5, 8, 256, 16, 1024),
    (5, 8, 32, 16, 1024),
    (1, 5, 40, 7, 72),
    (3, 33, 24, 9, 264),
    (2, 3, 8, 1, 8),
    (1, 32, 256, 61, 96),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_equals_autograd(shape, bias, threads):
    replicas, dim, hidden, latents, samples = shape
    g = torch.Generator().manual_seed(1)
    x = torch.rand(dim, samples, generator=g)
    atoms = torch.nn.functional.normalize(torch.randn(replicas, dim, latents, generator=g), dim=1)
    first, second = _layers(replicas, dim, hidden, latents, bias)
    step = NativeMLPStep(required=True)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert step.applies(x, first.weight, atoms)
        mse, l1, codes, grad_atoms = step(x, first, second, atoms, 0.01, atoms_grad=True)
    finally:
        torch.set_num_threads(saved)
    ref_codes, ref_mse, ref_l1, ref_grads, ref_atoms = _autograd(x, first, second, atoms, 0.01)
    close = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(codes, ref_codes, **close)
    torch.testing.assert_close(mse, ref_mse, **close)
    torch.testing.assert_close(l1, ref_l1, **close)
    torch.testing.assert_close(grad_atoms, ref_atoms, **close)
    grads = [p.grad for p in (*first.parameters(), *second.parameters())]
    assert len(grads) == len(ref_grads) == (4 if bias else 2)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad, ref, **close)


def test_fused_step_is_deterministic_and_skips_the_atoms_gradient():
    x = torch.rand(8, 1024, generator=torch.Generator().manual_seed(2))
    atoms = torch.nn.functional.normalize(torch.randn(5, 8, 16), dim=1)
    first, second = _layers(5, 8, 256, 16, bias=True)
    step = NativeMLPStep(required=True)
    assert step.applies(x, first.weight, atoms)
    once = [t.clone() for t in step(x, first, second, atoms, 0.01, atoms_grad=False)[:3]]
    grads = [p.grad.clone() for p in first.parameters()]
    again = step(x, first, second, atoms, 0.01, atoms_grad=False)
    assert again[3] is None
    for a, b in zip(once, again[:3], strict=True):
        assert torch.equal(a, b)
    for a, p in zip(grads, first.parameters(), strict=True):
        assert torch.equal(a, p.grad)


def test_shapes_and_dtypes_the_kernel_does_not_take():
    first, _ = _layers(2, 8, 32, 16, bias=False)
    atoms = torch.randn(2, 8, 16)
    step = NativeMLPStep(required=True)
    assert step.applies(torch.rand(8, 64), first.weight, atoms)
    assert not step.applies(torch.rand(8, 60), first.weight, atoms)  # samples not a multiple of 8
    assert not step.applies(torch.rand(2, 8, 64), first.weight, atoms)  # per-replica inputs
    assert not step.applies(torch.rand(8, 64, dtype=torch.bfloat16), first.weight, atoms)
    odd, _ = _layers(2, 8, 12, 16, bias=False)  # hidden width not a multiple of 8
    assert not step.applies(torch.rand(8, 64), odd.weight, atoms)
    wide = torch.randn(2, 8, MAX_LATENTS + 1)  # BLAS is faster there
    assert not step.applies(torch.rand(8, 64), first.weight, wide)


def test_training_takes_the_fused_step_by_default_and_the_torch_step_when_off():
    common = ["encoder=mlp", "encoder.hidden=256", "replicas=2", "encoder.bias=true"]
    native = build_model(compose_config(common))
    torch_step = build_model(compose_config([*common, "encoder.native=false"]))
    assert native.encoder.native is not None and torch_step.encoder.native is None
    for model in (native, torch_step):
        step = make_step(model)
        for _ in range(5):
            step()
    assert native.encoder.native._lib is not None  # the kernel did run
    copied = copy.deepcopy(native.encoder)  # a copy reloads the library when it steps
    assert copied.native is not None and copied.native._lib is None
    for name, value in torch_step.encoder.state_dict().items():
        torch.testing.assert_close(native.encoder.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        native.decoder.weight, torch_step.decoder.weight, rtol=1e-4, atol=1e-5
    )


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEGAP_CACHE_DIR", str(tmp_path / "cache"))
    library.cache_clear()
    yield tmp_path / "cache"
    library.cache_clear()


def test_the_library_is_built_once_into_its_cache(fresh_cache):
    library("mlp_step")
    built = list(fresh_cache.glob("mlp_step-*.so"))
    assert len(built) == 1 and not list(fresh_cache.glob(".*"))  # no temporary left behind
    stamp = built[0].stat().st_mtime_ns
    library.cache_clear()
    library("mlp_step")
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_without_a_compiler_the_torch_step_runs_and_says_why(fresh_cache, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr("sparsegap.accel.native.mlp_step._warned", False)
    with pytest.raises(NativeUnavailable, match="no-such-compiler"):
        NativeMLPStep(required=True).applies(
            torch.rand(8, 64), torch.rand(2, 32, 8), torch.rand(2, 8, 16)
        )
    model = build_model(compose_config(["encoder=mlp", "replicas=2"]))
    step = make_step(model)
    step()
    step()
    assert model.encoder.native is not None and model.encoder.native._lib is None
    err = capsys.readouterr().err
    assert err.count("fused MLP step is unavailable") == 1 and "no-such-compiler" in err
    assert not fresh_cache.exists() or not list(fresh_cache.iterdir())


def test_a_failed_compilation_reports_the_compiler_error(fresh_cache, monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(build, "SOURCES", tmp_path)
    with pytest.raises(NativeUnavailable, match=r"compiling broken\.cpp failed"):
        library("broken")
    assert not [p for p in fresh_cache.iterdir() if p.name.startswith(".")]
    assert os.environ["SPARSEGAP_CACHE_DIR"] == str(fresh_cache)


def test_an_unwritable_cache_is_reported_not_raised_as_a_crash(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSEGAP_CACHE_DIR", str(blocker / "cache"))  # below a file: no mkdir
    library.cache_clear()
    try:
        with pytest.raises(NativeUnavailable, match="cannot write the kernel cache"):
            library("mlp_step")
    finally:
        library.cache_clear()
