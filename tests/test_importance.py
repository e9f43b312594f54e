"""Feature importance weights (``data.importance``) in the scenario losses: the default leaves
every loss bit for bit unchanged; decay weights give the weighted means the docstring of
``Scenario.loss`` promises; a run with ``data.importance=decay`` trains end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, read_metrics
from torch.nn.functional import cosine_similarity

from sparsegap.__main__ import run
from sparsegap.model import build
from sparsegap.scenarios import SCENARIOS

SCENARIO_ENCODERS = [("known_codes", "mlp"), ("known_dictionary", "sae"), ("unknown", "sae")]


def _codes(model):
    return model.encoder(model.data.x_train)


@pytest.mark.parametrize(("scenario", "encoder"), SCENARIO_ENCODERS)
def test_default_importance_leaves_the_losses_identical(scenario, encoder):
    model = build(compose_config([f"scenario={scenario}", f"encoder={encoder}"]))
    data = model.data
    assert torch.equal(data.importance, torch.ones(model.cfg.data.N))
    codes = _codes(model)
    atoms = model.decoder.weight if model.decoder is not None else None
    plain = model.scenario.loss(codes, data.x_train, data.codes_train, atoms, model.cfg.l1_coeff)
    through_model = model.losses(data.x_train, data.codes_train, codes)
    for name, value in plain.named().items():
        assert torch.equal(through_model.named()[name], value), name
    plain.total.sum().backward()
    grads = [p.grad.clone() for p in model.encoder.parameters()]
    model.encoder.zero_grad()
    model.losses(data.x_train, data.codes_train, _codes(model)).total.sum().backward()
    for before, after in zip(grads, (p.grad for p in model.encoder.parameters()), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize(("scenario", "encoder"), SCENARIO_ENCODERS)
def test_all_ones_weights_match_the_unweighted_loss(scenario, encoder):
    model = build(compose_config([f"scenario={scenario}", f"encoder={encoder}"]))
    data, codes = model.data, _codes(model)
    atoms = model.decoder.weight if model.decoder is not None else None
    args = (codes, data.x_train, data.codes_train, atoms, model.cfg.l1_coeff)
    plain = model.scenario.loss(*args).named()
    ones = model.scenario.loss(*args, importance=torch.ones(model.cfg.data.N)).named()
    assert plain.keys() == ones.keys()
    for name in plain:
        torch.testing.assert_close(ones[name], plain[name])


def test_known_codes_loss_is_the_hand_computed_weighted_mean():
    model = build(compose_config(["scenario=known_codes", "encoder=mlp", "data.importance=decay"]))
    data = model.data
    n = model.cfg.data.N
    weights = torch.tensor([0.9**i for i in range(n)])
    torch.testing.assert_close(data.importance, weights)
    codes = _codes(model).detach()
    losses = model.losses(data.x_train, data.codes_train, codes)
    for r in range(model.cfg.replicas):
        rows = [cosine_similarity(codes[r, i], data.codes_train[i], dim=0).item() for i in range(n)]
        expected = sum(w * c for w, c in zip(weights.tolist(), rows, strict=True)) / sum(
            weights.tolist()
        )
        assert losses.cosine[r].item() == pytest.approx(expected, rel=1e-5)
        assert losses.total[r].item() == pytest.approx(-expected, rel=1e-5)
        unweighted = sum(rows) / n
        assert losses.cosine[r].item() != pytest.approx(unweighted, rel=1e-5)


def test_known_codes_cosine_per_sample_is_the_hand_computed_mean():
    model = build(compose_config(["scenario=known_codes", "encoder=mlp", "scenario.cosine=sample"]))
    data = model.data
    codes = _codes(model).detach()
    losses = model.losses(data.x_train, data.codes_train, codes)
    samples = data.codes_train.shape[1]
    for r in range(model.cfg.replicas):
        columns = [
            cosine_similarity(codes[r, :, b], data.codes_train[:, b], dim=0).item()
            for b in range(samples)
        ]
        assert losses.cosine[r].item() == pytest.approx(sum(columns) / samples, rel=1e-5)


def test_known_dictionary_weights_the_l1_per_latent_and_not_the_reconstruction():
    model = build(
        compose_config(["scenario=known_dictionary", "encoder=sae", "data.importance=decay"])
    )
    data, codes = model.data, _codes(model).detach()
    weighted = model.losses(data.x_train, data.codes_train, codes)
    plain = model.scenario.loss(
        codes, data.x_train, data.codes_train, model.decoder.weight, model.cfg.l1_coeff
    )
    torch.testing.assert_close(weighted.mse, plain.mse)
    w = data.importance
    expected = (codes.mean(dim=2) * w).sum(dim=1) / w.sum()
    torch.testing.assert_close(weighted.l1, expected)
    torch.testing.assert_close(weighted.total, plain.mse + model.cfg.l1_coeff * expected)


def test_unknown_scenario_ignores_importance():
    assert not SCENARIOS["unknown"].needs_matching_latents
    model = build(compose_config(["scenario=unknown", "encoder=sae", "data.importance=decay"]))
    data, codes = model.data, _codes(model).detach()
    weighted = model.losses(data.x_train, data.codes_train, codes).named()
    plain = model.scenario.loss(
        codes, data.x_train, data.codes_train, model.decoder.weight, model.cfg.l1_coeff
    ).named()
    for name in plain:
        assert torch.equal(weighted[name], plain[name])


@pytest.mark.parametrize("scenario", ["known_codes", "known_dictionary"])
def test_a_run_with_decay_importance_trains_end_to_end(tmp_path, scenario):
    overrides = [f"scenario={scenario}", "encoder=sae", "data.importance=decay"]
    cfg = compose_config([*overrides, "steps=300", "eval_every=150"])
    run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 150, 300]
    assert records[-1]["loss/total/train"]["mean"] < records[0]["loss/total/train"]["mean"]
    assert 0 < records[-1]["latent_mcc/test"]["mean"] <= 1
