"""Classical dictionary learning (alternating minimisation) and the scikit-learn baseline."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_config, read_metrics

from sparsegap.__main__ import run
from sparsegap.config import ConfigError
from sparsegap.extras import MissingExtra
from sparsegap.model import build
from sparsegap.step import make_step
from sparsegap.validate import validate

SMALL = ["steps=30", "eval_every=15", "data.train_samples=256", "data.test_samples=128"]


def _finite(record: dict) -> bool:
    values = [v for v in record.values() if not isinstance(v, str)]
    flat = [x for v in values for x in (v["replicas"] if isinstance(v, dict) else [v])]
    return all(math.isfinite(x) for x in flat)


@pytest.mark.parametrize("update", ["least_squares", "gradient"])
def test_dictionary_learning_trains_end_to_end(tmp_path, update):
    cfg = compose_config(
        ["encoder=dictionary_learning", f"encoder.dictionary_update={update}",
         "encoder.restarts=1", *SMALL]
    )  # fmt: skip
    run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 15, 30]
    assert all(_finite(r) for r in records)
    last = records[-1]
    assert last["flops/train_cumulative"] > 0 and last["flops/inference_test"] > 0
    assert last["dictionary_mcc"]["mean"] > records[0]["dictionary_mcc"]["mean"]


def test_sklearn_dl_trains_end_to_end(tmp_path):
    cfg = compose_config(["encoder=sklearn_dl", "replicas=1", "steps=2", "eval_every=1",
                          "data.train_samples=128", "data.test_samples=64"])  # fmt: skip
    run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(_finite(r) for r in records)
    assert records[-1]["loss/total/train"]["mean"] < records[0]["loss/total/train"]["mean"]
    assert records[-1]["flops/train_cumulative"] > 0


def _objective(model) -> torch.Tensor:
    """The inference's objective ||D·S − X||²/(M·B) + l1·mean(S), per replica."""
    x, atoms, codes = model.data.x_train, model.decoder.weight, model.encoder.codes
    residual = atoms @ codes - x
    return residual.square().mean(dim=(1, 2)) + model.encoder.inference.l1_coeff * codes.mean(
        dim=(1, 2)
    )


def test_least_squares_update_decreases_the_training_objective():
    cfg = compose_config(["encoder=dictionary_learning", "encoder.restarts=0", *SMALL])
    model = build(cfg)
    encoder, x = model.encoder, model.data.x_train
    step = make_step(model)
    step()  # codes now match the dictionary
    for _ in range(3):
        atoms = model.decoder.weight.detach().clone()
        codes = encoder.inference(x, atoms, init=encoder.codes)
        before = (atoms @ codes - x).square().sum(dim=(1, 2))
        updated = encoder.update_dictionary(x, atoms.clone(), codes)
        after = (updated @ codes - x).square().sum(dim=(1, 2))
        assert (after <= before + 1e-6).all()
        # the least-squares solution is a minimum: any perturbation is worse
        perturbed = updated + 1e-3 * torch.randn_like(updated)
        assert ((perturbed @ codes - x).square().sum(dim=(1, 2)) >= after).all()
        step()
    objectives = []
    for _ in range(5):
        step()
        objectives.append(_objective(model))
    # Whole alternating steps (inference, update, renormalisation) do not go uphill overall.
    assert (objectives[-1] <= objectives[0] * 1.01).all()


def test_train_step_replaces_the_adam_step_and_keeps_unit_atoms():
    model = build(compose_config(["encoder=dictionary_learning", "encoder.restarts=2", *SMALL]))
    assert model.train_step_flops().total > 0
    step = make_step(model)
    before = model.decoder.weight.detach().clone()
    step()
    after = model.decoder.weight.detach()
    assert not torch.equal(before, after)
    norms = after.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert model.encoder.all_atoms.shape[0] == 2 * 3


def test_replica_i_equals_a_single_run_with_seed_plus_i():
    common = ["encoder=dictionary_learning", "encoder.restarts=1", *SMALL]
    together = build(compose_config([*common, "replicas=3", "seed=5"]))
    alone = build(compose_config([*common, "replicas=1", "seed=7"]))
    for model in (together, alone):
        step = make_step(model)
        for _ in range(4):
            step()
    torch.testing.assert_close(together.decoder.weight[2], alone.decoder.weight[0])


def test_invalid_dictionary_update_is_rejected():
    cfg = compose_config(["encoder=dictionary_learning", "encoder.dictionary_update=svd"])
    with pytest.raises(ConfigError, match=r"encoder\.dictionary_update"):
        validate(cfg)


@pytest.mark.parametrize(
    ("update", "inference"),
    [("least_squares", "fista"), ("gradient", "fista"), ("least_squares", "best_subset")],
)
def test_declared_matmul_flops_match_a_training_step(update, inference):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose_config(
        ["encoder=dictionary_learning", f"encoder.dictionary_update={update}",
         f"encoder.inference.name={inference}", "encoder.restarts=2", "replicas=1", *SMALL]
    )  # fmt: skip
    model = build(cfg)
    step = make_step(model)
    step()  # the first step also sets the candidates up
    with FlopCounterMode(display=False) as counter:
        step()
    analytic = model.train_step_flops().matmul
    measured = counter.get_total_flops()
    assert abs(measured - analytic) <= 0.1 * analytic, (measured, analytic)


@pytest.mark.parametrize("key", ["encoder.test_inference", "encoder.inference.name"])
def test_best_subset_as_test_inference_or_as_the_code_step(tmp_path, key):
    """``encoder.test_inference=best_subset`` changes the test codes only; as the inference it is
    also every training step's code step. Both train, and the test codes keep at most k atoms."""
    cfg = compose_config(["encoder=dictionary_learning", f"{key}=best_subset",
                          "encoder.restarts=1", *SMALL])  # fmt: skip
    model = build(cfg)
    assert model.encoder.test_inference.name == "best_subset"
    assert (model.encoder.inference.name == "best_subset") == (key == "encoder.inference.name")
    run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert all(_finite(r) for r in records)
    assert records[-1]["dictionary_mcc"]["mean"] > records[0]["dictionary_mcc"]["mean"]
    codes = model.encoder.infer(model.data.x_test, model.decoder.weight.detach())
    assert ((codes != 0).sum(dim=1) <= cfg.data.K).all() and (codes >= 0).all()


def test_invalid_test_inference_is_rejected():
    cfg = compose_config(["encoder=dictionary_learning", "encoder.test_inference=lars"])
    with pytest.raises(ConfigError, match=r"encoder\.test_inference"):
        validate(cfg)


def test_sklearn_dl_without_scikit_learn_names_the_extra(monkeypatch):
    for name in ("sklearn", "sklearn.decomposition", "sklearn.exceptions"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    with pytest.raises(MissingExtra, match=r"pip install 'sparsegap\[sklearn\]'"):
        build(compose_config(["encoder=sklearn_dl", *SMALL]))
