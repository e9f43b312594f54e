"""``sparsegap-report`` on real run folders: completed, diverged, invalid and unfinished jobs,
a sparsity sweep (Pareto plot) and a 2 × 2 regime sweep (heatmaps)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from sparsegap.report import figures as report_figures
from sparsegap.report.aggregate import above_bound
from sparsegap.report.collect import Job, display, distinguish, label_of, load_jobs
from sparsegap.report.figures import regime_heatmaps

TINY = ["steps=20", "eval_every=10", "replicas=2", "logger=none", "device=cpu", "progress=false",
        "device.threads=1"]  # one thread: the tiny jobs run faster on a shared machine  # fmt: skip


def test_labels_name_the_method():
    assert label_of({"encoder": {"name": "sae"}}) == "sae"
    assert label_of({"encoder": {"name": "mlp", "hidden": 256}}) == "mlp-256"
    ito = {"name": "sae_ito", "init": "scratch", "inference": {"name": "adam_log"}}
    assert label_of({"encoder": ito}) == "sae_ito-scratch"
    sc = {"name": "sparse_coding", "inference": {"name": "fista"}}
    assert label_of({"encoder": sc}) == "sparse_coding-fista"


def test_jobs_of_one_method_that_differ_in_another_key_are_told_apart_not_pooled():
    def job(name, **top):
        config = {
            "scenario": {"name": "unknown"},
            "data": {"N": 16, "M": 8, "K": 3},
            "encoder": {"name": "sae"},
            **{"l1_coeff": 0.01, "lr": 1e-3, "seed": 0, **top},
        }
        return Job(Path(name), name, "completed", None, config, [], 1.0)

    jobs = [job("a"), job("b", seed=5), job("c", lr=0.1)]
    distinguish(jobs)
    assert [j.label for j in jobs] == ["sae lr=0.001", "sae lr=0.001", "sae lr=0.1"]
    assert display("mlp-256 lr=0.1") == "MLP (hidden 256) lr=0.1"
    distinguish(jobs[:2])  # seeds are pooled
    assert [j.label for j in jobs[:2]] == ["sae", "sae"]


def test_regime_cells_with_enough_measurements_are_outlined_not_crossed_by_a_curve(monkeypatch):
    def job(n, m):
        config = {"scenario": {"name": "unknown"}, "data": {"N": n, "M": m, "K": 2},
                  "encoder": {"name": "sae"}, "l1_coeff": 0.01}  # fmt: skip
        mcc = {"mean": 0.5, "std": 0.0, "replicas": [0.5]}
        return Job(Path(f"{n}-{m}"), f"{n}-{m}", "completed", None, config, [], 1.0,
                   [{"step": 10, "latent_mcc/test": mcc}])  # fmt: skip

    figures = []
    monkeypatch.setattr(
        report_figures, "save", lambda fig, out, stem, tight=False: figures.append(fig)
    )
    regime_heatmaps([job(n, m) for n in (8, 16) for m in (4, 8)], Path("unused"))
    (ax,) = figures[0].axes[:1]
    assert not ax.lines  # no M = K·ln(N/K) curve across the categorical rows
    outlined = {(round(r.get_x() + 0.5), round(r.get_y() + 0.5)) for r in ax.patches}
    # (column N index, row M index): 2·ln(8/2) ≈ 2.8 ≤ 4, 8; 2·ln(16/2) ≈ 4.2 ≤ 8 only
    assert outlined == {(0, 0), (0, 1), (1, 1)}
    assert above_bound(8, 4, 2) and not above_bound(16, 4, 2)


def _report(sweep, *args):
    return subprocess.run(
        [sys.executable, "-m", "sparsegap.report", str(sweep), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """4 completed jobs (SAE, MLP × two L1 coefficients), one diverged (lr=1e30), one invalid
    (data.K > data.N, stopped before tracking) and one left 'running' with no process holding its
    folder, as ``kill -9`` leaves a run: 'interrupted'."""
    root = tmp_path_factory.mktemp("mixed")
    good = run_cli(
        ["-m", "encoder=sae,mlp", "l1_coeff=0.01,0.1", *TINY, "hydra.sweep.dir=sweep"], cwd=root
    )
    assert good.returncode == 0, good.stderr
    bad = run_cli(
        ["-m", "lr=1e30", "data.K=3,99", *TINY, "hydra.sweep.dir=sweep",
         "hydra.sweep.subdir=bad${hydra.job.num}"],
        cwd=root,
    )  # fmt: skip
    assert bad.returncode != 0  # the multirun reports its failed jobs
    sweep = root / "sweep"
    shutil.copytree(sweep / "0", sweep / "unfinished")
    summary = json.loads((sweep / "unfinished" / "summary.json").read_text())
    summary["status"] = "running"
    (sweep / "unfinished" / "summary.json").write_text(json.dumps(summary))
    metrics = sweep / "unfinished" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    return sweep


@pytest.mark.slow
def test_report_lists_every_job_and_writes_csv_table_and_figures(mixed_sweep):
    result = _report(mixed_sweep)
    assert result.returncode == 0, result.stderr
    out = mixed_sweep / "report"
    rows = _csv(out / "results.csv")
    by_job: dict[str, list[dict]] = {}
    for row in rows:
        by_job.setdefault(row["job"], []).append(row)
    assert set(by_job) == {"0", "1", "2", "3", "bad0", "bad1", "unfinished"}
    statuses = {job: {r["status"] for r in job_rows} for job, job_rows in by_job.items()}
    assert statuses["bad0"] == {"failed"}  # diverged: NaN loss
    assert statuses["bad1"] == {"no summary"}  # invalid config: stopped before tracking
    assert statuses["unfinished"] == {"interrupted"}
    assert all(statuses[j] == {"completed"} for j in "0123")
    # completed jobs: 3 evaluations (steps 0, 10, 20) × 2 replicas
    for job in "0123":
        got = sorted((int(r["step"]), int(r["replica"])) for r in by_job[job])
        assert got == [(s, r) for s in (0, 10, 20) for r in (0, 1)]
    assert len(by_job["bad1"]) == 1 and by_job["bad1"][0]["step"] == ""
    assert "data.K=99" in by_job["bad1"][0]["error"] and by_job["0"][0]["error"] == ""
    assert len(by_job["unfinished"]) == 2  # step 0 only, two replicas
    labels = {r["label"] for job in "0123" for r in by_job[job]}
    assert labels == {"sae", "mlp-32"}
    first = by_job["0"][-1]
    for column in ("scenario", "N", "M", "K", "l1_coeff", "flops_train", "flops_total",
                   "latent_mcc_test", "latent_mcc_train", "dictionary_mcc", "loss_total_train",
                   "l0_test"):  # fmt: skip
        assert first[column] != "", column
    assert float(first["flops_train"]) > 0
    assert 0 <= float(first["latent_mcc_test"]) <= 1

    # console and summary.md: the table and the jobs that did not complete, with their errors
    for text in (result.stdout, (out / "summary.md").read_text()):
        assert "| mlp-32 |" in text and "| sae |" in text
        assert "3 of 7 jobs did not complete" in text
        assert "NonFiniteLoss" in text
        assert "| bad1 | no summary |" in text and "| unfinished | interrupted |" in text
        assert "invalid configuration: data.K=99 is invalid" in text
    figures = {p.name for p in out.iterdir() if p.suffix in (".png", ".pdf")}
    stems = {"curves_unknown_N16_M8_K3_l1-0.01", "curves_unknown_N16_M8_K3_l1-0.1",
             "pareto_unknown_N16_M8_K3"}  # fmt: skip
    assert figures == {f"{s}.{e}" for s in stems for e in ("png", "pdf")}
    assert all((out / f).stat().st_size > 1000 for f in figures)


@pytest.mark.slow
def test_report_of_a_single_run_folder_and_custom_out(mixed_sweep, tmp_path):
    result = _report(mixed_sweep / "2", "--out", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 0, result.stderr
    rows = _csv(tmp_path / "r" / "results.csv")
    assert len(rows) == 6 and {r["job"] for r in rows} == {"2"}
    assert "All jobs completed." in result.stdout


def test_report_of_an_empty_folder_is_an_error_not_a_crash(tmp_path):
    result = _report(tmp_path)
    assert result.returncode == 2
    assert "no run folders" in result.stderr


@pytest.mark.slow
def test_regime_sweep_draws_heatmaps(tmp_path):
    result = run_cli(
        ["-m", "data.N=8,16", "data.M=4,8", "data.K=2", "encoder=sae,mlp", *TINY,
         "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    report = _report(sweep, "--metric", "best")
    assert report.returncode == 0, report.stderr
    # the default metric, in-process (no curves: quicker)
    regime_heatmaps(load_jobs(sweep), sweep / "report", "final", stem="regimes_unknown_final")
    for metric in ("final", "best"):
        for ext in ("png", "pdf"):
            assert (sweep / "report" / f"regimes_unknown_{metric}.{ext}").stat().st_size > 1000
    rows = _csv(sweep / "report" / "results.csv")
    assert {(r["N"], r["M"]) for r in rows} == {("8", "4"), ("8", "8"), ("16", "4"), ("16", "8")}
    curves = list((sweep / "report").glob("curves_*.png"))  # 4 settings: not in curves/
    assert len(curves) == 4  # one per regime
