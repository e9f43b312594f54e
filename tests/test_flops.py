"""Analytic FLOP counts (sparsegap.flops and every encoder's declarations) against
``torch.utils.flop_counter.FlopCounterMode`` on real training steps and inference calls.

FlopCounterMode only counts matrix products: the ``matmul`` part of every analytic count must
equal it exactly. The elementwise part (renormalisation, activations, losses, Adam), which no
counter sees, must equal the formulas of paper App. G written out below, term by term.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from sparsegap.config import InferenceConfig
from sparsegap.encoders import ENCODERS
from sparsegap.flops import Flops, adam_update
from sparsegap.inference.adam_log import AdamLog
from sparsegap.model import Model, build
from sparsegap.registry import register_configs
from sparsegap.scenarios import SCENARIOS
from sparsegap.step import make_step
from sparsegap.validate import validate

CONF = Path(__file__).parents[1] / "conf"
ADAM_FLOPS = 12  # per parameter: two moment updates (3 + 4), bias corrections and the step (5)

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
    for scenario in SCENARIOS
    if scenario in ENCODERS[overrides[0].split("=")[1]].scenarios
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


def expected_elementwise(model: Model) -> int:
    """Elementwise FLOPs of one training step per replica, from App. G's formulas: the encoder's
    forward and backward (and its auxiliary losses), the loss, the atoms' renormalisation and
    Adam's update of every trained parameter."""
    cfg, encoder = model.cfg, model.encoder
    e, b = cfg.encoder, int(cfg.encoder.bias)
    M, L, B = encoder.dim, encoder.latents, model.samples_per_step
    LB, MB = L * B, M * B
    decoder = model.decoder is not None
    learned = decoder and model.decoder.learned
    # forward 3MB + 2LB (residual, square, means, L1), backward 2MB + 2LB
    reconstruction = 5 * MB + 4 * LB
    name = e.name
    if name in ("sae", "sae_ito"):
        own = 2 * (1 + b) * LB  # (bias,) ReLU; backward the same
    elif name == "mlp":
        own = 2 * (1 + b) * (e.hidden + L) * B
    elif name == "sparse_coding":
        own = 2 * LB  # exp and its chain rule
    elif name in ("topk", "batch_topk"):
        own = (3 + 2 * b) * LB + e.k * B  # (bias,) ReLU, selection, scatter; back (bias,) mask
        if e.aux_k and decoder:  # residual, masking, selection + a second reconstruction loss
            own += 7 * MB + 2 * LB + e.aux_k * B + reconstruction
    elif name == "jumprelu":
        own = L + (2 + 6) * LB + 2 * b * LB + (6 * LB if decoder else 0)  # + its L0 term
    elif name == "gated":
        own = L + (4 + 2 * b) * LB + (6 + 2 * b) * LB
        own += (reconstruction + 4 * LB) if decoder else 0  # the gate's L1, frozen-decoder loss
    elif name == "lista":
        T = e.layers
        own = (2 + b) * LB + 2 * T * LB  # (bias,) − θ, ReLU; per layer: + G·S bias-add, ReLU
        own += (2 + b) * LB + 3 * T * LB  # (bias,) mask, θ; per layer: bias, mask, θ
    else:
        raise AssertionError(f"no App. G formula written for encoder {name}")
    loss = reconstruction if decoder else 12 * LB  # known codes: two normalisations, dots, grads
    renormalise = 3 * M * L + L if learned and e.normalise_decoder else 0
    trained = sum(p.numel() for p in encoder.parameters() if p.requires_grad) // cfg.replicas
    trained += M * L if learned else 0
    return own + loss + renormalise + ADAM_FLOPS * trained


def test_adam_costs_twelve_flops_per_parameter() -> None:
    assert adam_update(1000) == Flops(elementwise=ADAM_FLOPS * 1000)


@pytest.mark.parametrize(("variant", "scenario", "extra"), CASES)
def test_train_step_flops(variant: str, scenario: str, extra: list[str]) -> None:
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
    assert measured == analytic
    assert model.train_step_flops().elementwise == expected_elementwise(model)

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
    assert measured == analytic
