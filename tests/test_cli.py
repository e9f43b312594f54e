"""The real entry point in subprocesses: single runs, multiruns, and a run killed mid-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import read_metrics, read_summary, run_cli

pytestmark = pytest.mark.slow


def test_single_run_writes_metrics_summary_and_offline_wandb(tmp_path):
    result = run_cli(["steps=40", "eval_every=20", "replicas=2", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 20, 40]
    assert read_summary(run_dir)["status"] == "completed"
    # stdout is a pipe here, as in a SLURM log: one labelled line per evaluation, as it happens
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in progress[:3]] == [
        "step 0/40",
        "step 20/40",
        "step 40/40",
    ]
    logged = read_metrics(run_dir)
    mcc = logged[1]["latent_mcc/test"]["mean"]
    assert f"test latent MCC {mcc:.4g}" in progress[1] and "train loss " in progress[1]
    # the final table: every value starts in the same column, FLOPs and best rows included
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("metric "))) :][:-1]
    names = [line.split()[0] for line in table[1:]]
    assert {"latent_mcc/test", "flops/total", "best"} <= set(names)
    ends = {len(line) for line in table if not line.startswith(("metric", "flops", "best"))}
    assert len(ends) == 1  # mean and std right-aligned
    mean_end = table[0].index("mean") + len("mean")
    for line in table[1:]:
        assert line[mean_end - 1] != " " and line[mean_end : mean_end + 1] in ("", " "), line


def test_multirun_one_folder_per_job_sharing_a_wandb_group(tmp_path):
    result = run_cli(
        ["-m", "data.K=2,3", "steps=20", "eval_every=10", "replicas=1", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    ks = sorted(read_summary(j)["config"]["data"]["K"] for j in jobs)
    assert ks == [2, 3]
    assert all(read_summary(j)["status"] == "completed" for j in jobs)
    groups = {read_summary(j)["wandb"]["group"] for j in jobs}
    assert groups == {"sweep"}  # named after the sweep folder
    assert all(read_summary(j)["wandb"]["mode"] == "offline" for j in jobs)


def test_killed_run_keeps_its_metrics_and_is_marked_failed(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsegap", "steps=1000000", "eval_every=200", "replicas=1",
         "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    summary = read_summary(run_dir)
    assert summary["status"] == "failed", stderr
    assert "terminated by signal" in summary["error"]
    lines = metrics.read_text().splitlines()
    assert len(lines) >= 2
    assert all(json.loads(line)["step"] % 200 == 0 for line in lines)  # every line complete


def test_skip_completed_continues_an_interrupted_multirun(tmp_path):
    sweep = ["-m", "data.K=2,3", "steps=20", "eval_every=10", "replicas=1", "logger=none",
             "skip_completed=true", "hydra.sweep.dir=sweep"]  # fmt: skip
    assert run_cli(sweep, cwd=tmp_path).returncode == 0
    done, interrupted = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    before = (done / "metrics.jsonl").stat().st_mtime_ns, (done / "model.pt").read_bytes()
    # Job 1 as a kill leaves it: marked failed, its metrics cut short.
    summary = read_summary(interrupted) | {"status": "failed"}
    (interrupted / "summary.json").write_text(json.dumps(summary))
    metrics = interrupted / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")

    result = run_cli(sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already holds a completed run of this config, skipped") == 1
    assert ((done / "metrics.jsonl").stat().st_mtime_ns, (done / "model.pt").read_bytes()) == before
    assert read_summary(interrupted)["status"] == "completed"
    assert [r["step"] for r in read_metrics(interrupted)] == [0, 10, 20]

    # Another value of a key that changes the run: not the same run, so it runs again.
    result = run_cli([*sweep, "lr=0.002"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    assert read_summary(done)["config"]["lr"] == 0.002
