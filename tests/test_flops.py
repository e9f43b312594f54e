"""Analytic FLOP counts (sparsegap.flops and every encoder's declarations) against
``torch.utils.flop_counter.FlopCounterMode`` on real training steps and inference calls.

FlopCounterMode only counts matrix products, so the comparison is with the ``matmul`` part of the
analytic count; renormalisation, activations, losses and Adam are elementwise.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from sparsegap.config import InferenceConfig, register_configs, validate
from sparsegap.encoders import ENCODERS
from sparsegap.flops import Flops
from sparsegap.inference.adam_log import AdamLog
from sparsegap.model import Model, build
from sparsegap.scenarios import SCENARIOS
from sparsegap.step import make_step

CONF = Path(__file__).parents[1] / "conf"
REL_TOL = 0.10

# Every encoder variant the brief names, with every scenario it applies to.
VARIANTS = {
    "sae": ["encoder=sae"],
    # The torch step: FlopCounterMode cannot see into the fused C++ step, which runs the same
    # products (tests/test_native.py checks that it computes the same step).
    "mlp32": ["encoder=mlp", "encoder.hidden=32", "encoder.native=false"],
    "mlp256": ["encoder=mlp", "encoder.hidden=256", "encoder.native=false"],
    "sparse_coding": ["encoder=sparse_coding"],
    "sae_ito": ["encoder=sae_ito"],
    "topk": ["encoder=topk"],
    "batch_topk": ["encoder=batch_topk"],
    "jumprelu": ["encoder=jumprelu"],
    "gated": ["encoder=gated"],
    "lista": ["encoder=lista"],
}
CASES = [
    pytest.param(variant, scenario, [], id=f"{variant}-{scenario}")
    for variant, overrides in VARIANTS.items()
    for scenario, spec in SCENARIOS.items()
    if overrides[0].split("=")[1] in spec.encoders
]
# A few extra shapes: biases, and more or fewer latents than sources.
CASES += [
    pytest.param("mlp32", "unknown", ["encoder.bias=true"], id="mlp32-unknown-bias"),
    pytest.param("sae", "known_dictionary", ["encoder.bias=true"], id="sae-known_dictionary-bias"),
    pytest.param("sae", "unknown", ["encoder.latents=24"], id="sae-unknown-L24"),
    pytest.param("sparse_coding", "unknown", ["encoder.latents=10"], id="sc-unknown-L10"),
    pytest.param("topk", "unknown", ["encoder.latents=24", "encoder.k=5"], id="topk-unknown-L24"),
    pytest.param("topk", "unknown", ["encoder.aux_k=4"], id="topk-unknown-auxk"),
    pytest.param("batch_topk", "known_dictionary", ["encoder.aux_k=4"], id="btopk-kd-auxk"),
    pytest.param("gated", "unknown", ["encoder.bias=false"], id="gated-unknown-nobias"),
    pytest.param("jumprelu", "unknown", ["encoder.bias=true"], id="jumprelu-unknown-bias"),
    pytest.param("lista", "unknown", ["encoder.layers=0"], id="lista-unknown-T0"),
    pytest.param("lista", "unknown", ["encoder.layers=10", "encoder.latents=24"], id="lista-T10"),
]


@functools.cache
def _compose(overrides: tuple[str, ...]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=["replicas=1", "logger=none", "device=cpu", *overrides],
        )
    validate(cfg)
    return cfg


def compose_cfg(overrides: list[str]):
    """Hydra's compose takes ~0.2 s; each distinct override list is composed once."""
    return copy.deepcopy(_compose(tuple(overrides)))


def make_model(variant: str, scenario: str, extra: list[str]) -> Model:
    return build(compose_cfg([*VARIANTS[variant], f"scenario={scenario}", *extra]))


# Gradient-free encoders (their own train_step): checked in tests/test_dictionary_learning.py.
SELF_TRAINED = {"dictionary_learning", "sklearn_dl"}


def test_registry_is_covered() -> None:
    names = {o[0].split("=")[1] for o in VARIANTS.values()}
    assert names | SELF_TRAINED == set(ENCODERS)


def _relative_error(measured: int, analytic: int) -> float:
    return abs(measured - analytic) / max(analytic, 1)


@pytest.mark.parametrize(("variant", "scenario", "extra"), CASES)
def test_train_step_matmul_flops(variant: str, scenario: str, extra: list[str]) -> None:
    model = make_model(variant, scenario, extra)
    data = model.data
    analytic = model.train_step_flops().matmul
    assert analytic > 0

    # Forward + backward as the training step runs them.
    with FlopCounterMode(display=False) as counter:
        codes = model.encoder(data.x_train)
        model.losses(data.x_train, data.codes_train, codes).total.sum().backward()
    measured = counter.get_total_flops()
    print(f"{variant}/{scenario}{extra}: measured {measured:,} analytic {analytic:,}")
    assert _relative_error(measured, analytic) <= REL_TOL, (measured, analytic)

    # The full step (renormalisation, zero_grad, forward, backward, Adam) adds no matmul.
    step = make_step(model)
    with FlopCounterMode(display=False) as counter:
        step()
    assert counter.get_total_flops() == measured


def test_train_step_flops_are_per_replica() -> None:
    one = make_model("mlp32", "unknown", [])
    three = build(compose_cfg([*VARIANTS["mlp32"], "scenario=unknown", "replicas=3"]))
    assert three.train_step_flops() == one.train_step_flops()
    with FlopCounterMode(display=False) as counter:
        codes = three.encoder(three.data.x_train)
        three.losses(three.data.x_train, three.data.codes_train, codes).total.sum().backward()
    assert counter.get_total_flops() == 3 * one.train_step_flops().matmul


# --------------------------------------------------------------------------- inference
#
# Iterative inference costs ``flops = setup + iterations * iteration_flops`` per replica (setup:
# work done once per call, e.g. a Gram matrix; zero where an algorithm has none). The tests check
# the declared counts against FlopCounterMode without assuming a particular algorithm.


def _inference_encoder(variant: str, scenario: str, extra: list[str], iterations: int):
    cfg = compose_cfg([*VARIANTS[variant], f"scenario={scenario}", *extra])
    cfg.encoder.inference.iterations = iterations
    validate(cfg)
    model = build(cfg)
    return model, model.encoder


@pytest.mark.parametrize(
    ("variant", "scenario", "extra"),
    [
        ("sparse_coding", "unknown", []),
        ("sparse_coding", "unknown", ["encoder.latents=24"]),
        ("sae_ito", "unknown", []),
        ("sae_ito", "known_dictionary", ["encoder.init=scratch"]),
    ],
)
def test_infer_flops_linear_in_iterations(variant: str, scenario: str, extra: list[str]) -> None:
    samples = 1000
    counts, encoders = {}, {}
    for iterations in (0, 1, 37, 10_000):
        _, encoder = _inference_encoder(variant, scenario, extra, iterations)
        assert encoder.inference.iterations == iterations
        counts[iterations] = encoder.infer_flops(samples)
        encoders[iterations] = encoder
    per_iteration = encoder.inference.iteration_flops(samples, encoder.latents, encoder.dim)
    assert per_iteration.matmul > 0 and per_iteration.elementwise > 0
    for k, flops in counts.items():
        assert flops == counts[0] + per_iteration * k, k
    # What does not scale: one SAE forward pass for the amortised start (init=sae), nothing for
    # sparse coding or a scratch start, plus the algorithm's once-per-call setup.
    zero = encoders[0]
    setup = zero.inference.flops(samples, zero.latents, zero.dim)
    amortised_start = variant == "sae_ito" and zero.cfg.init == "sae"
    start = zero.forward_flops(samples) if amortised_start else Flops()
    assert counts[0] == start + setup


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("samples", "latents", "dim"), [(1024, 16, 8), (100, 24, 8), (64, 10, 5), (300, 8, 16)]
)
def test_adam_log_iteration_matmul_flops(samples: int, latents: int, dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(dim, samples, generator=g)
    atoms = torch.randn(1, dim, latents, generator=g)

    def run(iterations: int) -> tuple[int, AdamLog]:
        inference = AdamLog(InferenceConfig(iterations=iterations), l1_coeff=0.01)
        return _counted(lambda: inference(x, atoms)), inference

    measured = {k: run(k)[0] for k in (0, 1, 6)}
    one = run(1)[1]
    per_iteration = one.iteration_flops(samples, latents, dim).matmul
    print(
        f"adam_log M={dim} L={latents} B={samples}: measured {measured}, declared per iteration"
        f" {per_iteration}, 4*M*L*B = {4 * dim * latents * samples}"
    )
    # One iteration costs exactly the declared count (setup included), and each further
    # iteration exactly iteration_flops().matmul.
    assert measured[1] == one.flops(samples, latents, dim).matmul
    assert measured[1] - measured[0] == per_iteration
    assert measured[6] - measured[1] == 5 * per_iteration
    assert measured[6] == run(6)[1].flops(samples, latents, dim).matmul


@pytest.mark.parametrize(
    ("variant", "scenario", "extra"),
    [
        ("sae", "unknown", []),
        ("mlp256", "known_dictionary", []),
        ("batch_topk", "unknown", []),
        ("lista", "unknown", []),
        ("gated", "known_dictionary", []),
        ("sparse_coding", "unknown", ["encoder.inference.iterations=3"]),
        ("sae_ito", "unknown", ["encoder.inference.iterations=3"]),
        ("sae_ito", "known_dictionary", ["encoder.init=scratch", "encoder.inference.iterations=3"]),
    ],
)
def test_infer_matmul_flops(variant: str, scenario: str, extra: list[str]) -> None:
    model = make_model(variant, scenario, extra)
    x = model.data.x_test
    measured = _counted(lambda: model.encoder.infer(x, model.decoder.weight))
    analytic = model.encoder.infer_flops(x.shape[1]).matmul
    assert analytic > 0
    assert _relative_error(measured, analytic) <= REL_TOL, (measured, analytic)
