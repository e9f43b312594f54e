"""Launchers and experiment presets: every preset composes, and 2-job multiruns run to completion
under joblib (the ``local`` preset) and submitit's local executor (what ``slurm`` runs on)."""

from __future__ import annotations

import os

import pytest
from helpers import CONF, compose_config, read_summary, run_cli
from hydra import compose, initialize_config_dir

from sparsegap.registry import register_configs

TINY = ["steps=20", "eval_every=10", "replicas=1", "logger=none", "device=cpu", "progress=false"]

EXPERIMENTS = {
    "known_codes": ("known_codes", "sae,mlp,mlp_256,mlp_1024"),
    "known_dictionary": (
        "known_dictionary",
        "sae,mlp,mlp_256,sae_ito_known_dictionary,sae_ito_known_dictionary_scratch",
    ),
    "unknown": ("unknown", "sae,sae_ito,sae_ito_scratch,sparse_coding,mlp,mlp_256"),
    "regimes": ("unknown", "mlp_256,sparse_coding_1k,sae"),
    "sparsity": ("unknown", "sae,mlp,sparse_coding"),
}


def _compose(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_presets_compose_with_their_grid_group_and_folder(name):
    cfg = _compose([f"+experiment={name}"])
    scenario, encoders = EXPERIMENTS[name]
    assert cfg.scenario.name == scenario
    assert cfg.logger.group is None  # W&B groups by sweep folder; the preset is a tag
    assert cfg.hydra.runtime.choices.experiment == name
    assert cfg.hydra.sweep.dir.endswith(f"-{name}")
    assert cfg.hydra.sweeper.params.encoder == encoders
    if name == "regimes":
        assert cfg.steps == 30000 and cfg.replicas == 1
        params = cfg.hydra.sweeper.params
        assert (params["data.N"], params["data.M"], params["data.K"]) == (
            "256,128,64,32,16", "8,16,32", "3,9,15"
        )  # fmt: skip


@pytest.mark.parametrize(
    "encoder", ["mlp_1024", "sae_ito_scratch", "sparse_coding_1k", "sae_ito", "mlp_256"]
)
def test_encoder_presets_of_the_experiments(encoder):
    scenario = "scenario=known_dictionary" if encoder.startswith("sae_ito") else "scenario=unknown"
    cfg = _compose([f"encoder={encoder}", scenario])
    expected = {
        "mlp_1024": ("hidden", 1024),
        "mlp_256": ("hidden", 256),
        "sae_ito_scratch": ("init", "scratch"),
        "sae_ito": ("init", "sae"),
    }
    if encoder == "sparse_coding_1k":
        assert cfg.encoder.inference.iterations == 1000
    else:
        key, value = expected[encoder]
        assert cfg.encoder[key] == value


def test_launcher_presets_compose():
    local = _compose(["hydra/launcher=local"]).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2
    slurm = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.partition == "gpu" and slurm.timeout_min == 240
    assert slurm.gpus_per_node == 0 and slurm.array_parallelism == 64


def _threads_in_worker(_: int) -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.slow
def test_joblib_workers_limit_torch_threads_to_their_share_of_the_cores():
    from joblib import Parallel, delayed

    threads = Parallel(n_jobs=2, prefer="processes")(
        delayed(_threads_in_worker)(i) for i in range(2)
    )
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit_local"])
def test_two_job_multirun_under_a_parallel_launcher(launcher, tmp_path):
    result = run_cli(
        ["-m", "encoder=sae,mlp", f"hydra/launcher={launcher}", *TINY, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    summaries = [read_summary(j) for j in jobs]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert sorted(s["config"]["encoder"]["name"] for s in summaries) == ["mlp", "sae"]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_job_of_every_preset_is_a_valid_configuration(name):
    """Expand the preset's grid as the basic sweeper does and validate each job's config
    (composed once per encoder; the other swept keys are plain values set on a copy)."""
    import copy
    import itertools

    from omegaconf import OmegaConf

    from sparsegap.validate import validate

    params = _compose([f"+experiment={name}"]).hydra.sweeper.params
    keys = list(params)
    grid = [str(params[k]).split(",") for k in keys]
    composed = {
        encoder: compose_config(
            [f"+experiment={name}", "device=cpu", f"encoder={encoder}"], fast=False
        )
        for encoder in grid[keys.index("encoder")]
    }
    jobs = list(itertools.product(*grid))
    for values in jobs:
        job = dict(zip(keys, values, strict=True))
        cfg = copy.deepcopy(composed[job.pop("encoder")])
        for key, value in job.items():
            OmegaConf.update(cfg, key, float(value) if "." in value else int(value))
        validate(cfg)
    assert len(jobs) == {"regimes": 135, "sparsity": 18}.get(name, len(grid[0]))


def test_gpu_launcher_preset_is_joblib_with_jobs_per_gpu():
    gpu = _compose(["hydra/launcher=gpu", "hydra.launcher.n_jobs=6"]).hydra.launcher
    assert gpu._target_.endswith("JoblibLauncher") and gpu.n_jobs == 6
    assert _compose(["hydra/launcher=gpu"]).hydra.launcher.n_jobs == 4


@pytest.mark.slow
def test_several_jobs_at_once_under_the_gpu_preset_complete_with_their_report(tmp_path):
    """``make paper DEVICE=cuda``'s launch (``reproduction.launch``) with the device swapped
    for the CPU: jobs run side by side, each in its own folder, and the report lists them all."""
    from sparsegap.report.__main__ import make_report
    from sparsegap.report.collect import label_of
    from sparsegap.report.reproduction import launch

    tiny = {o.split("=")[0] for o in TINY}
    overrides = [o for o in launch("cuda", 2) if o.split("=")[0] not in tiny]
    result = run_cli(
        ["-m", "encoder=sae,mlp,mlp_256", *overrides, *TINY, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1", "2"]
    summaries = [read_summary(j) for j in jobs]
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert all((j / "metrics.jsonl").exists() and (j / "model.pt").exists() for j in jobs)
    report = make_report(tmp_path / "sweep")
    table = (tmp_path / "sweep" / "report" / "summary.md").read_text()
    labels = {label_of(job.config) for job in report["jobs"]}
    assert len(report["jobs"]) == 3 and len(labels) == 3
    assert all(label in table for label in labels)
