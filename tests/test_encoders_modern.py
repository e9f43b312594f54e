"""Modern SAE encoders (TopK, BatchTopK, JumpReLU, Gated, LISTA): end-to-end runs, their defining
structural properties, the per-encoder loss hooks, and the replica contract."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import compose_config, read_metrics, read_summary

from sparsegap.__main__ import run
from sparsegap.config import ConfigError
from sparsegap.encoders import ENCODERS
from sparsegap.model import build
from sparsegap.step import make_step
from sparsegap.validate import fill_defaults, validate

MODERN = ("topk", "batch_topk", "jumprelu", "gated", "lista")
AUXILIARY = {"jumprelu": {"l0"}, "gated": {"l1_gate", "aux_mse"}}


def _model(overrides: list[str]):
    cfg = compose_config(overrides)
    validate(cfg)
    return build(cfg)


def _train(model, steps: int) -> None:
    step = make_step(model)
    for _ in range(steps):
        step()


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(math.isfinite(v) for v in value["replicas"])
    return math.isfinite(value)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("scenario", ["unknown", "known_dictionary"])
@pytest.mark.parametrize("encoder", MODERN)
def test_trains_end_to_end(tmp_path, encoder, scenario):
    run(compose_config([f"encoder={encoder}", f"scenario={scenario}"]), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 20, 40]
    for record in records:
        assert all(_finite(v) for v in record.values()), record
    last = records[-1]
    assert 0 < last["latent_mcc/test"]["mean"] <= 1
    assert ("dictionary_mcc" in last) == (scenario == "unknown")
    assert read_summary(tmp_path)["status"] == "completed"
    # The hooks: every auxiliary term is logged on both splits; the L1 term is always logged but
    # only counted by encoders with l1_penalty; the total is exactly the sum of what counts.
    cls = ENCODERS[encoder]
    for split in ("train", "test"):
        aux = AUXILIARY.get(encoder, set())
        logged = {k.split("/")[1] for k in last if k.startswith("loss/") and k.endswith(split)}
        assert logged == {"total", "mse", "l1"} | aux
        for r in range(2):
            expected = last[f"loss/mse/{split}"]["replicas"][r]
            expected += sum(last[f"loss/{name}/{split}"]["replicas"][r] for name in aux)
            if cls.l1_penalty:
                expected += 0.01 * last[f"loss/l1/{split}"]["replicas"][r]
            assert last[f"loss/total/{split}"]["replicas"][r] == pytest.approx(expected, rel=1e-5)


def test_l1_penalty_flags():
    assert {name for name in MODERN if not ENCODERS[name].l1_penalty} == {
        "topk", "batch_topk", "jumprelu", "gated"
    }  # fmt: skip
    assert ENCODERS["lista"].l1_penalty and ENCODERS["sae"].l1_penalty


@pytest.mark.parametrize("encoder", MODERN)
def test_replica_i_equals_a_single_run_with_seed_plus_i(tmp_path, encoder):
    run(compose_config([f"encoder={encoder}", "replicas=3", "seed=10"]), tmp_path / "together")
    run(compose_config([f"encoder={encoder}", "replicas=1", "seed=12"]), tmp_path / "alone")
    together = read_metrics(tmp_path / "together")[-1]
    alone = read_metrics(tmp_path / "alone")[-1]
    for key in ("latent_mcc/test", "dictionary_mcc", "loss/total/train", "loss/total/test"):
        assert together[key]["replicas"][2] == pytest.approx(alone[key]["replicas"][0], rel=1e-4)
    assert len(set(together["latent_mcc/test"]["replicas"])) == 3


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("encoder", ["topk", "batch_topk"])
def test_k_defaults_to_data_K_and_is_checked(encoder):
    cfg = compose_config([f"encoder={encoder}", "data.K=4"])
    assert cfg.encoder.k is None
    fill_defaults(cfg)
    assert cfg.encoder.k == 4
    assert build(compose_config([f"encoder={encoder}", "data.K=4"])).encoder.k == 4
    with pytest.raises(ConfigError, match=r"encoder\.k=17"):
        validate(compose_config([f"encoder={encoder}", "encoder.k=17"]))
    with pytest.raises(ConfigError, match=r"encoder\.k \(null = data\.K\)=5"):
        validate(compose_config([f"encoder={encoder}", "data.K=5", "encoder.latents=4"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("encoder=jumprelu encoder.bandwidth=0", "encoder.bandwidth=0"),
        ("encoder=jumprelu encoder.l0_coeff=-1", "encoder.l0_coeff=-1"),
        ("encoder=jumprelu encoder.init_threshold=0", "encoder.init_threshold=0"),
        ("encoder=lista encoder.layers=-1", "encoder.layers=-1"),
        ("encoder=batch_topk encoder.threshold_momentum=0", "encoder.threshold_momentum=0"),
        ("encoder=topk encoder.aux_k=17", "encoder.aux_k=17"),  # more than the 16 latents
        ("encoder=batch_topk encoder.aux_k=-1", "encoder.aux_k=-1"),
        ("encoder=topk encoder.aux_coeff=-1", "encoder.aux_coeff=-1"),
        ("encoder=topk encoder.aux_dead_tokens=0", "encoder.aux_dead_tokens=0"),
        ("encoder=topk encoder.aux_k=2 scenario=known_codes", "encoder.aux_k=2"),
    ],
)
def test_bad_values_are_rejected(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(compose_config(override.split()))


# ----------------------------------------------------------------------------- TopK


@pytest.mark.parametrize("k", [None, 1, 5])
def test_topk_keeps_at_most_k_per_sample(k):
    overrides = ["encoder=topk", "scenario=unknown"] + ([f"encoder.k={k}"] if k else [])
    model = _model(overrides)
    k = k or model.cfg.data.K
    _train(model, 20)
    x = model.data.x_test
    for codes in (model.encoder(x), model.encoder.infer(x, model.decoder.weight)):
        per_sample = (codes != 0).sum(dim=1)
        assert per_sample.max() <= k
        # ... and exactly k wherever at least k pre-activations are positive
        positive = (model.encoder.linear(x) > 0).sum(dim=1)
        assert torch.equal(per_sample, positive.clamp(max=k))
        assert (codes >= 0).all()


def test_topk_gradient_reaches_only_the_kept_latents():
    model = _model(["encoder=topk", "encoder.k=2", "replicas=1"])
    x = model.data.x_train[:, :1]
    codes = model.encoder(x)
    codes.sum().backward()
    grad = model.encoder.linear.weight.grad[0]  # (L, M)
    kept = codes[0, :, 0] != 0
    assert (grad[~kept] == 0).all() and (grad[kept] != 0).any()


# ----------------------------------------------------------------------------- AuxK


@pytest.mark.parametrize("encoder", ["topk", "batch_topk"])
def test_auxk_counts_tokens_since_firing_in_training_only(encoder):
    model = _model([f"encoder={encoder}", "encoder.aux_k=3", "replicas=2"])
    enc, x = model.encoder, model.data.x_train[:, :3]  # 3 samples × k = 3: ≤ 9 of 16 fire
    assert enc.tokens_since_fired.shape == (2, 16) and "tokens_since_fired" in enc.state_dict()
    enc.tokens_since_fired.fill_(7)
    codes = enc(x)
    fired = (codes != 0).any(dim=2)
    assert fired.any() and not fired.all()  # the idle latents count on from 7
    expected = torch.where(fired, 0, 7 + x.shape[1])
    assert torch.equal(enc.tokens_since_fired, expected)
    with torch.no_grad():  # evaluation leaves the count alone
        enc(x)
    assert torch.equal(enc.tokens_since_fired, expected)
    # Off (the default): no buffer, nothing counted, no term
    plain = _model([f"encoder={encoder}"])
    assert "tokens_since_fired" not in plain.encoder.state_dict()
    assert plain.encoder.auxiliary_losses(x, plain.encoder(x), plain.decoder.weight) == {}


@pytest.mark.parametrize("encoder", ["topk", "batch_topk"])
def test_auxk_gradient_reaches_only_the_dead_latents(encoder):
    model = _model([f"encoder={encoder}", "encoder.k=2", "encoder.aux_k=3", "replicas=2",
                    "encoder.aux_dead_tokens=1000000"])  # fmt: skip
    enc, x, atoms = model.encoder, model.data.x_train, model.decoder.weight
    codes = enc(x)
    # Nothing dead yet: the term is 0 and pulls on nothing
    loss = enc.auxiliary_losses(x, codes, atoms)["auxk"]
    assert loss.shape == (2,) and (loss == 0).all()
    dead = torch.zeros(2, 16, dtype=torch.bool)
    dead[0, [1, 5, 9]] = dead[1, [0, 5]] = True
    codes = enc(x)
    enc.tokens_since_fired.copy_(dead * 10**7)
    loss = enc.auxiliary_losses(x, codes, atoms)["auxk"]
    # 1/32 × a normalised MSE (of the residual's reconstruction) × x's variance
    nmse = loss / (enc.aux_coeff * (x - x.mean(dim=1, keepdim=True)).square().mean())
    assert (nmse > 0).all() and (nmse < 2).all()
    loss.sum().backward()
    weight_grad = enc.linear.weight.grad.abs().sum(dim=2)  # (R, L)
    atoms_grad = model.decoder.weight.grad.abs().sum(dim=1)  # (R, L)
    for grad in (weight_grad, atoms_grad):
        assert (grad[~dead] == 0).all() and (grad[dead] > 0).any()
    # ... and the main reconstruction's residual is its fixed target (no gradient through it)
    enc.zero_grad()
    codes = enc(x)
    enc.tokens_since_fired.zero_()
    enc.auxiliary_losses(x, codes, atoms)["auxk"].sum().backward()
    assert enc.linear.weight.grad is None or (enc.linear.weight.grad == 0).all()


def test_auxk_trains_end_to_end_with_its_term_in_the_total(tmp_path):
    overrides = ["encoder=topk", "encoder.latents=32", "encoder.aux_k=4", "replicas=2",
                 "encoder.aux_dead_tokens=2048", "steps=60"]  # fmt: skip
    run(compose_config(overrides), tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert read_summary(tmp_path)["status"] == "completed"
    # Logged with every evaluation: the latents AuxK counts dead, from the checkpointed count
    since = torch.load(tmp_path / "model.pt")["encoder"]["tokens_since_fired"]
    assert last["dead_latents/auxk"]["replicas"] == (since >= 2048).sum(dim=1).tolist()
    for split in ("train", "test"):
        aux = last[f"loss/auxk/{split}"]["replicas"]
        # after 60 steps some latent of some replica has idled for 2,048 tokens (0: none has)
        assert all(0 <= value < 1 for value in aux) and any(value > 0 for value in aux)
        for r in range(2):
            expected = last[f"loss/mse/{split}"]["replicas"][r] + aux[r]
            assert last[f"loss/total/{split}"]["replicas"][r] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- BatchTopK


def test_batch_topk_keeps_exactly_k_times_B_per_replica_in_training():
    model = _model(["encoder=batch_topk", "replicas=3"])
    encoder, x = model.encoder, model.data.x_train
    k, samples = encoder.k, x.shape[1]
    assert encoder.threshold.shape == (3, 1, 1)
    assert (encoder.threshold == 0).all()
    for _ in range(3):
        _train(model, 10)
        codes = encoder(x)  # gradients enabled: a training forward pass
        assert ((codes != 0).sum(dim=(1, 2)) == k * samples).all()
        per_sample = (codes != 0).sum(dim=1)
        assert per_sample.min() < k < per_sample.max()  # adaptive per sample, k on average
    # The threshold estimate is per replica, positive, saved with the model and logged.
    assert (encoder.threshold > 0).all()
    assert len(set(encoder.threshold.flatten().tolist())) == 3
    assert "threshold" in encoder.state_dict()
    assert (
        encoder.state_metrics()["batch_topk/threshold"].tolist()
        == encoder.threshold.flatten().tolist()
    )
    assert "dead_latents/auxk" not in encoder.state_metrics()  # AuxK off


def test_batch_topk_threshold_tracks_the_smallest_kept_activation():
    model = _model(["encoder=batch_topk", "replicas=2", "encoder.threshold_momentum=1"])
    encoder, x = model.encoder, model.data.x_train
    codes = encoder(x)
    smallest = torch.where(codes > 0, codes, math.inf).amin(dim=(1, 2))
    assert torch.equal(encoder.threshold.flatten(), smallest.detach())
    # Evaluation (no gradients) leaves it alone.
    with torch.no_grad():
        encoder(x[:, :100] * 2)
    assert torch.equal(encoder.threshold.flatten(), smallest.detach())


def test_batch_topk_inference_is_per_sample_and_uses_the_threshold():
    model = _model(["encoder=batch_topk", "scenario=known_dictionary"])
    _train(model, 40)
    encoder, x, atoms = model.encoder, model.data.x_test, model.decoder.weight
    batch = encoder.infer(x, atoms)
    pre = encoder.linear(x).relu()
    assert torch.equal(batch, pre * (pre > encoder.threshold))
    single = torch.cat([encoder.infer(x[:, i : i + 1], atoms) for i in range(5)], dim=2)
    assert torch.allclose(single, batch[:, :, :5], atol=1e-6)  # up to GEMM rounding
    # the threshold makes inference about as sparse as training (k per sample on average)
    assert abs((batch != 0).sum(dim=1).double().mean().item() - encoder.k) < 1.5


# ----------------------------------------------------------------------------- JumpReLU


def test_jumprelu_threshold_gets_gradient_from_both_terms():
    model = _model(["encoder=jumprelu", "encoder.init_threshold=0.2"])
    encoder, data = model.encoder, model.data
    codes = encoder(data.x_train)
    theta = encoder.threshold.detach()
    assert ((codes == 0) | (codes > theta)).all()
    losses = model.losses(data.x_train, data.codes_train, codes)
    (grad_mse,) = torch.autograd.grad(losses.mse.sum(), encoder.log_threshold, retain_graph=True)
    (grad_l0,) = torch.autograd.grad(losses.auxiliary["l0"].sum(), encoder.log_threshold)
    assert grad_mse.abs().sum() > 0
    assert (grad_l0 <= 0).all() and (grad_l0 < 0).any()  # raising θ lowers the L0 penalty
    # and the full step moves θ
    before = encoder.log_threshold.detach().clone()
    _train(model, 1)
    assert not torch.equal(encoder.log_threshold.detach(), before)


def test_jumprelu_l0_penalty_counts_active_latents():
    model = _model(["encoder=jumprelu", "encoder.l0_coeff=0.5"])
    data, encoder = model.data, model.encoder
    codes = encoder(data.x_train)
    l0 = model.losses(data.x_train, data.codes_train, codes).auxiliary["l0"]
    expected = 0.5 * (codes != 0).double().mean(dim=(1, 2))
    assert torch.allclose(l0.double(), expected)
    # Codes from elsewhere (no cached forward) give the same value by recomputation.
    again = model.losses(data.x_train, data.codes_train, codes.clone()).auxiliary["l0"]
    assert torch.equal(again, l0)


def test_jumprelu_larger_l0_coeff_gives_sparser_codes():
    l0 = {}
    for coeff in (0.0, 1.0):
        model = _model(["encoder=jumprelu", f"encoder.l0_coeff={coeff}", "replicas=1"])
        _train(model, 300)
        l0[coeff] = (model.encoder(model.data.x_test) != 0).sum(dim=1).double().mean().item()
    assert l0[1.0] < l0[0.0]


# ----------------------------------------------------------------------------- Gated


def test_gated_auxiliary_reconstruction_uses_a_frozen_decoder():
    model = _model(["encoder=gated", "scenario=unknown"])
    encoder, data = model.encoder, model.data
    codes = encoder(data.x_train)
    losses = model.losses(data.x_train, data.codes_train, codes)
    aux = losses.auxiliary["aux_mse"].sum()
    grads = torch.autograd.grad(
        aux, [model.decoder.weight, encoder.linear.weight, encoder.b_gate], allow_unused=True
    )
    assert grads[0] is None  # the decoder copy is frozen
    assert grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0
    # the gate gets no gradient through the main reconstruction (H is flat) ...
    codes = encoder(data.x_train)
    mse = model.losses(data.x_train, data.codes_train, codes).mse.sum()
    (grad_gate,) = torch.autograd.grad(mse, encoder.b_gate, allow_unused=True)
    assert grad_gate is None or (grad_gate == 0).all()
    # ... while the magnitude path does.
    assert encoder.b_mag is not None and encoder.cfg.bias


def test_gated_codes_are_gate_times_magnitude():
    model = _model(["encoder=gated"])
    _train(model, 30)
    encoder, x = model.encoder, model.data.x_test
    shared = encoder.linear(x)
    gate = shared + encoder.b_gate
    magnitude = (shared * encoder.r_mag.exp() + encoder.b_mag).relu()
    assert torch.allclose(encoder(x), magnitude * (gate > 0))
    assert (encoder(x) != 0).sum() < (magnitude != 0).sum()  # the gate does close latents


# ----------------------------------------------------------------------------- LISTA


def test_lista_without_layers_is_a_relu_sae():
    sae = _model(["encoder=sae", "seed=3"])
    for layers in (0, 3):
        lista = _model(["encoder=lista", f"encoder.layers={layers}", "seed=3"])
        # Same initial W (same generators) and G = θ = 0: an untrained LISTA is the SAE.
        x = lista.data.x_test
        assert torch.equal(lista.encoder(x), sae.encoder(x))
    # With T = 0 the lateral weights are unused; θ acts as a negative bias.
    lista = _model(["encoder=lista", "encoder.layers=0"])
    _train(lista, 20)
    encoder, x = lista.encoder, lista.data.x_test
    assert torch.equal(encoder.lateral, torch.zeros_like(encoder.lateral))
    assert torch.allclose(encoder(x), (encoder.linear(x) - encoder.theta).relu())


def test_lista_layers_are_unrolled_ista_steps():
    model = _model(["encoder=lista", "encoder.layers=2"])
    _train(model, 20)
    encoder, x = model.encoder, model.data.x_test
    assert encoder.lateral.abs().sum() > 0 and encoder.theta.abs().sum() > 0
    drive = encoder.linear(x) - encoder.theta
    s = drive.relu()
    for _ in range(2):
        s = (drive + encoder.lateral @ s).relu()
    assert torch.allclose(encoder(x), s, atol=1e-6)
