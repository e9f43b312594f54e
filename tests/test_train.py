"""End-to-end runs through Hydra's compose API and the real loop, tracker and metrics."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_config, read_metrics, read_summary

from sparsegap.__main__ import run
from sparsegap.model import build
from sparsegap.registry import encoders_for
from sparsegap.scenarios import SCENARIOS
from sparsegap.step import make_step

PAIRS = [(s, e) for s in SCENARIOS for e in encoders_for(s)]


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(math.isfinite(v) for v in value["replicas"])
    return math.isfinite(value)


@pytest.mark.parametrize(("scenario", "encoder"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_every_valid_pair_runs_end_to_end(tmp_path, scenario, encoder):
    overrides = [f"scenario={scenario}", f"encoder={encoder}"]
    if encoder in ("sparse_coding", "sae_ito"):
        overrides.append("encoder.inference.iterations=50")
    cfg = compose_config(overrides)
    mcc = run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 20, 40]
    for record in records:
        assert all(_finite(v) for v in record.values()), record
        assert len(record["latent_mcc/test"]["replicas"]) == 2
    last = records[-1]
    assert 0 < last["latent_mcc/test"]["mean"] <= 1
    assert mcc == pytest.approx(last["latent_mcc/test"]["mean"])
    assert ("dictionary_mcc" in last) == (scenario == "unknown")
    assert last["flops/train_cumulative"] > records[1]["flops/train_cumulative"] > 0
    assert last["flops/total"] == last["flops/train_cumulative"] + last["flops/inference_test"]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["config"]["encoder"]["name"] == encoder
    assert summary["final"] == last


def test_replica_i_equals_a_single_run_with_seed_plus_i(tmp_path):
    together = compose_config(["replicas=3", "seed=10", "encoder=mlp"])
    run(together, tmp_path / "together")
    alone = compose_config(["replicas=1", "seed=12", "encoder=mlp"])
    run(alone, tmp_path / "alone")
    last_together = read_metrics(tmp_path / "together")[-1]
    last_alone = read_metrics(tmp_path / "alone")[-1]
    for key in ("latent_mcc/test", "dictionary_mcc", "loss/total/train"):
        assert last_together[key]["replicas"][2] == pytest.approx(
            last_alone[key]["replicas"][0], rel=1e-4
        )
    # and the replicas really differ from each other
    assert len(set(last_together["latent_mcc/test"]["replicas"])) == 3


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        run(
            compose_config(["encoder=sparse_coding", "encoder.inference.iterations=30"]),
            tmp_path / name,
        )
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]


def test_training_improves_the_paper_default(tmp_path):
    run(compose_config(["steps=3000", "eval_every=500", "replicas=2"]), tmp_path)
    first, last = read_metrics(tmp_path)[0], read_metrics(tmp_path)[-1]
    assert last["loss/total/train"]["mean"] < 0.5 * first["loss/total/train"]["mean"]
    assert last["latent_mcc/test"]["mean"] > first["latent_mcc/test"]["mean"] + 0.05
    assert last["dictionary_mcc"]["mean"] > first["dictionary_mcc"]["mean"]


def test_non_finite_loss_fails_the_run_and_keeps_metrics(tmp_path):
    cfg = compose_config(["lr=1e30", "steps=60", "eval_every=20"])
    with pytest.raises(FloatingPointError, match="not finite"):
        run(cfg, tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert "NonFiniteLoss" in summary["error"]
    records = read_metrics(tmp_path)
    assert records[0]["step"] == 0 and _finite(records[0]["loss/total/train"])
    assert summary["final"]["step"] == records[-1]["step"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=mlp"],  # the C++ kernel
        ["encoder=mlp", "encoder.native=false"],
        ["encoder=sae", "encoder.fast_step=false"],
        ["encoder=sparse_coding"],
        ["encoder=topk"],
    ],
    ids=["mlp-native", "mlp-torch", "sae-autograd", "sparse_coding", "topk"],
)
def test_every_step_takes_unit_norm_atoms(overrides):
    model = build(compose_config(overrides))
    step = make_step(model)
    for _ in range(5):
        step()
    # Adam's update moves the atoms off the unit sphere: the next step must bring them back.
    norms = model.decoder.weight.detach().norm(dim=1)
    assert (norms - 1).abs().max() > 1e-4
    # With a zero learning rate a step leaves the atoms exactly as it used them.
    step.optimiser.lr = 0.0
    step()
    norms = model.decoder.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)


def test_known_dictionary_decoder_is_the_truth_and_frozen(tmp_path):
    model = build(compose_config(["scenario=known_dictionary"]))
    before = model.decoder.weight.clone()
    step = make_step(model)
    for _ in range(3):
        step()
    assert torch.equal(model.decoder.weight, before)
    assert torch.allclose(model.decoder.weight[0], model.data.dictionary)


def test_sae_ito_from_sae_codes_differs_from_scratch(tmp_path):
    common = ["scenario=known_dictionary", "encoder=sae_ito", "encoder.inference.iterations=20"]
    run(compose_config([*common, "encoder.init=sae"]), tmp_path / "sae")
    run(compose_config([*common, "encoder.init=scratch"]), tmp_path / "scratch")
    sae = read_metrics(tmp_path / "sae")[-1]["latent_mcc/test"]["mean"]
    scratch = read_metrics(tmp_path / "scratch")[-1]["latent_mcc/test"]["mean"]
    assert sae != pytest.approx(scratch, abs=1e-3)


def test_ito_from_scratch_with_known_dictionary_trains_nothing(tmp_path):
    cfg = compose_config(
        ["scenario=known_dictionary", "encoder=sae_ito", "encoder.init=scratch",
         "encoder.inference.iterations=20"]
    )  # fmt: skip
    run(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert all(r["flops/train_cumulative"] == 0 for r in records)
    assert records[-1]["flops/inference_test"] > 0
    # nothing trained: identical test codes at every evaluation
    assert records[0]["latent_mcc/test"] == records[-1]["latent_mcc/test"]


@pytest.mark.parametrize("latents", [10, 24])
def test_rectangular_latents_in_unknown_scenario(tmp_path, latents):
    run(compose_config([f"encoder.latents={latents}"]), tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert 0 < last["latent_mcc/test"]["mean"] <= 1
    assert 0 < last["dictionary_mcc"]["mean"] <= 1


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    run(compose_config(["logger=wandb", "steps=20", "eval_every=10"]), tmp_path / "run")
    runs = list(wandb_dir.rglob("offline-run-*"))
    assert runs, list(wandb_dir.rglob("*"))
    assert list(runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_compiled_step_agrees_with_eager(tmp_path):
    for name, flag in (("eager", "false"), ("compiled", "true")):
        run(compose_config(["encoder=mlp", f"compile={flag}"]), tmp_path / name)
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    for a, b in zip(eager, compiled, strict=True):
        for key in ("latent_mcc/test", "loss/total/train", "dictionary_mcc"):
            assert a[key]["replicas"] == pytest.approx(b[key]["replicas"], rel=1e-4, abs=1e-6)


def test_zero_steps_evaluates_the_initialisation_once(tmp_path):
    run(compose_config(["steps=0", "replicas=1"]), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0]
    assert read_summary(tmp_path)["status"] == "completed"


def test_the_measured_coherence_of_the_true_dictionary_is_logged(tmp_path):
    overrides = ["steps=2", "eval_every=1", "replicas=1", "data.dictionary=coherent",
                 "data.coherence_target=0.3", "data.coherence_kind=mean"]  # fmt: skip
    run(compose_config(overrides), tmp_path)
    records = read_metrics(tmp_path)
    assert all(abs(r["data/coherence_mean"] - 0.3) <= 0.05 * 0.3 for r in records)
    assert all(r["data/coherence_max"] >= r["data/coherence_mean"] for r in records)
    assert (
        read_summary(tmp_path)["final"]["data/coherence_mean"] == records[-1]["data/coherence_mean"]
    )


def test_skip_completed_skips_only_a_completed_run_with_its_model(tmp_path, capsys):
    def again() -> str:
        capsys.readouterr()
        run(compose_config(["skip_completed=true"]), tmp_path)
        return capsys.readouterr().out

    assert "skipped" not in again()  # nothing there yet
    assert "skipped" in again()
    (tmp_path / "model.pt").unlink()  # a folder without its model is not a completed run
    assert "skipped" not in again()
    assert (tmp_path / "model.pt").exists()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 20, 40]  # not appended
