"""What the tracker sends to W&B, read back from the offline run's own file (wandb_reader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import compose_config, read_metrics, read_summary, run_cli
from wandb_reader import history, key_of, read_finished_run, records_of, run_file, summary, the_run

from sparsegap.__main__ import run
from sparsegap.tracking import Tracker

LOGGER = {"project": "sparsegap-test", "mode": "offline", "tags": ["read-back"]}
RECORDS = [
    {"step": 0, "loss/total/train": [1.0, 3.0], "flops/train_cumulative": 0, "note": 2.5},
    {"step": 10, "loss/total/train": [0.5, 1.5], "flops/train_cumulative": 640, "note": 1.25},
]


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "wandb"
    path.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(path))
    return path


def test_the_tracker_logs_every_record_and_the_summary_to_wandb(tmp_path, wandb_dir):
    with Tracker(tmp_path / "run", {"lr": 0.5}, LOGGER, group="g1", name="n1") as tracker:
        for record in RECORDS:
            tracker.log(record)
    records = read_finished_run(run_file(tracker))

    run_record = the_run(records)
    assert (run_record.run_group, run_record.display_name) == ("g1", "n1")
    assert list(run_record.tags) == ["read-back"]
    config = {key_of(i): json.loads(i.value_json) for i in run_record.config.update}
    assert config["lr"] == 0.5

    rows = history(records)
    assert [r["step"] for r in rows] == [0, 10]
    # per-replica metrics: mean, sample std, each replica, and the mean against compute
    assert rows[1]["loss/total/train"] == 1.0
    assert rows[1]["loss/total/train_std"] == pytest.approx(0.5**0.5)
    assert (rows[1]["replicas/loss/total/train/0"], rows[1]["replicas/loss/total/train/1"]) == (
        0.5,
        1.5,
    )
    assert rows[1]["vs_flops/loss/total/train"] == 1.0
    assert [r["note"] for r in rows] == [2.5, 1.25]  # scalars as they are
    assert [r["flops/train_cumulative"] for r in rows] == [0, 640]

    final = summary(records)
    assert final["status"] == "completed"
    for key, value in rows[-1].items():
        kept = final[key]["last"] if key == "loss/total/train" else final[key]
        assert kept == pytest.approx(value), key
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [0]


def test_a_failed_run_is_marked_failed_in_wandb(tmp_path, wandb_dir):
    with pytest.raises(RuntimeError), Tracker(tmp_path / "run", {}, LOGGER) as tracker:
        tracker.log(RECORDS[0])
        raise RuntimeError("boom")
    records = read_finished_run(run_file(tracker))
    assert [r["step"] for r in history(records)] == [0]
    assert summary(records)["status"] == "failed"
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]


def test_a_training_run_mirrors_its_metrics_in_wandb(tmp_path, wandb_dir):
    run(compose_config(["logger=wandb", "steps=20", "eval_every=10"]), tmp_path / "run")
    files = list(wandb_dir.rglob("run-*.wandb"))
    assert len(files) == 1, files
    records = read_finished_run(files[0])
    logged, rows = read_metrics(tmp_path / "run"), history(records)
    rows = [r for r in rows if "latent_mcc/test" in r]  # not the feature-density histograms
    assert [r["step"] for r in rows] == [r["step"] for r in logged] == [0, 10, 20]
    for line, row in zip(logged, rows, strict=True):
        for key in ("loss/total/train", "latent_mcc/test", "dictionary_mcc", "l0/test"):
            assert row[key] == pytest.approx(line[key]["mean"]), key
            assert row[f"replicas/{key}/1"] == pytest.approx(line[key]["replicas"][1]), key
        assert row["flops/total"] == line["flops/total"]
    final = summary(records)
    assert final["status"] == "completed"
    written = read_summary(tmp_path / "run")
    last = written["final"]
    assert final["latent_mcc/test"]["last"] == pytest.approx(last["latent_mcc/test"]["mean"])
    assert final["latent_mcc/test"]["max"] == pytest.approx(written["best"]["latent_mcc/test"])
    assert final["step"] == last["step"] == 20
    run_record = the_run(records)
    assert run_record.job_type == "train"
    assert {"unknown", "sae", "quick"} <= set(run_record.tags)  # 20 of the paper's 40,000 steps
    (artifact,) = records_of(records, "artifact")
    assert artifact.type == "model"
    assert [f.path for f in artifact.manifest.contents] == ["model.pt"]


def test_wandb_keeps_the_best_and_the_last_value_of_mcc_and_losses(tmp_path, wandb_dir):
    mcc, loss = [0.2, 0.9, 0.6], [3.0, 1.0, 2.0]
    with Tracker(tmp_path / "run", {}, LOGGER, job_type="harvest", tags=["t1"]) as tracker:
        for step, (m, l) in enumerate(zip(mcc, loss, strict=True)):
            tracker.log({"step": step, "latent_mcc/test": [m], "normalised_mse/test": l,
                         "loss/total/train": [l], "l0/test": [5.0 + step]})  # fmt: skip
        (tmp_path / "model.pt").write_bytes(b"weights")
        tracker.log_artifact([tmp_path / "model.pt"])
    records = read_finished_run(run_file(tracker))
    final = summary(records)
    assert final["latent_mcc/test"] == {"max": 0.9, "last": 0.6}
    assert final["normalised_mse/test"] == {"min": 1.0, "last": 2.0}
    assert final["loss/total/train"] == {"min": 1.0, "last": 2.0}
    assert final["l0/test"] == 7.0  # no best for a metric that is neither better high nor low
    run_record = the_run(records)
    assert run_record.job_type == "harvest"
    assert list(run_record.tags) == ["t1", "read-back"]
    (artifact,) = records_of(records, "artifact")
    assert (artifact.name, artifact.type) == (f"model-{run_record.run_id}", "model")


@pytest.mark.slow
def test_a_preset_sweep_is_one_group_with_short_names_and_tags(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m", "+experiment=bias", "encoder=sae", "encoder.bias=false", "data.K=3,4", "steps=4",
        "eval_every=2", "replicas=1", "data.train_samples=64", "data.test_samples=64", "device=cpu",
        "logger=wandb", "logger.mode=offline", "logger.group=null", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    result = run_cli(args, tmp_path, env={"WANDB_DIR": str(tmp_path / "wandb")})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {}
    for path in (tmp_path / "wandb").rglob("run-*.wandb"):
        run_record = the_run(read_finished_run(path))
        runs[run_record.display_name] = run_record
    assert sorted(runs) == ["unknown-sae-data.K=3", "unknown-sae-data.K=4"]
    for run_record in runs.values():
        assert run_record.run_group == "sweep"  # the sweep folder: one group per invocation
        assert run_record.job_type == "train"
        assert {"unknown", "sae", "bias", "quick"} <= set(run_record.tags)  # bias: the preset
