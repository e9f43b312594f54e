"""``make paper``'s REPRODUCTION.md: settings detection, sweep discovery, claim verdicts (fast),
and the whole QUICK path end to end (``paper`` marker: only ``make test-slow`` runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsegap.report.collect import Job
from sparsegap.report.reproduction import (
    BY_NAME,
    PRESETS,
    Finding,
    find_sweeps,
    known_codes,
    known_dictionary,
    regimes,
    settings_of,
    sparsity,
    unknown,
    write_reproduction,
)


def _job(steps: int, replicas: int) -> Job:
    config = {"steps": steps, "replicas": replicas, "encoder": {"name": "sae", "bias": True}}
    return Job(Path("j"), "j", "completed", None, config, [], 1.0)


def _result(encoder: str, mcc: float, l0: float = 3.0, l1_coeff: float = 0.01, **data) -> Job:
    config = {"steps": 30_000, "replicas": 1, "l1_coeff": l1_coeff,
              "encoder": {"name": encoder, "bias": False}, "data": {"K": 3, **data}}  # fmt: skip
    values = {"latent_mcc/test": mcc, "l0/test": l0, "l1/test": l0, "loss/mse/test": 0.0}
    record = {key: {"mean": v, "replicas": [v]} for key, v in values.items()}
    return Job(Path("j"), "j", "completed", None, config, [], 1.0, [record])


def test_regimes_note_the_regimes_where_a_linear_encoder_is_exact():
    jobs = [
        _result("sae", 1.0, N=16, M=32), _result("sparse_coding", 0.8, N=16, M=32),
        _result("sae", 0.4, N=64, M=16), _result("sparse_coding", 0.5, N=64, M=16),
        _result("sae", 0.3, N=64, M=8), _result("sparse_coding", 0.4, N=64, M=8),
    ]  # fmt: skip
    finding = regimes(jobs)
    assert "SC > SAE in 67% of regimes (≥ 80 %) ✗" in finding.check
    note = next(n for n in finding.notes if n.startswith("Where M ≥ N"))
    assert "(1 regime)" in note and "-0.200 on average" in note
    assert "In the other 2 regimes SC > SAE in 2 (+0.100 on average)" in note


def test_regimes_note_test_codes_left_near_their_start():
    jobs = [_result("sae", 0.5, N=32, M=8), _result("sparse_coding", 0.6, N=32, M=8)]
    jobs[1].evaluations[0]["l1/train"] = {"mean": 300.0, "replicas": [300.0]}  # test L1: 3.0
    assert any("(sparse_coding 1.0%)" in note for note in regimes(jobs).notes)
    jobs[1].evaluations[0]["l1/train"] = {"mean": 3.0, "replicas": [3.0]}  # converged
    assert not any("near their start" in note for note in regimes(jobs).notes)


def _replicas(encoder: dict, mcc: list[float], dead: list[float]) -> Job:
    config = {"steps": 20_000, "replicas": len(mcc), "encoder": encoder}
    record = {"step": 0, "latent_mcc/test": {"replicas": mcc},
              "dead_latents/test": {"replicas": dead}}  # fmt: skip
    return Job(Path("j"), "j", "completed", None, config, [], 1.0, [record])


def test_known_dictionary_splits_replicas_by_dead_latents():
    mlp = _replicas({"name": "mlp", "hidden": 256}, [0.95, 0.7, 0.6], [0.0, 2.0, 3.0])
    sae = _replicas({"name": "sae"}, [0.6, 0.62], [0.0, 0.0])
    note = next(n for n in known_dictionary([sae, mlp]).notes if n.startswith("Dead latents"))
    assert "mlp-256: 2 of 3 replicas end with 2–3 dead latents and reach 0.650" in note
    assert "the other 1 0.950" in note and "sae:" not in note
    mlp.evaluations[0]["dead_latents/test"]["replicas"] = [0.0, 0.0, 0.0]
    assert not any(n.startswith("Dead latents") for n in known_dictionary([sae, mlp]).notes)


def test_known_codes_paper_column_is_the_authors_known_codes_file():
    sae = _replicas({"name": "sae"}, [0.85, 0.87], [0.0, 0.0])
    finding = known_codes([sae])
    assert finding.table[1][:2] == ["sae", "0.862 ± 0.025"]
    assert next(r for r in finding.table if r[0] == "mlp-1024")[:2] == ["mlp-1024", "0.950"]
    assert any("fixed_Z_flops_reconstruction.json" in n for n in finding.notes)
    spread = next(n for n in finding.notes if n.startswith("Spread"))
    assert "sae 0.850–0.870 over 2 replicas" in spread and "0.862 lies inside" in spread


def test_unknown_notes_are_computed_from_the_runs():
    sc = _replicas({"name": "sparse_coding"}, [0.52, 0.55], [0.0, 0.0])
    sae = _replicas({"name": "sae"}, [0.5, 0.6], [0.0, 0.0])
    notes = unknown([sae, sc]).notes
    assert not any("0.72" in n for n in notes)  # no fixed empirical prose
    spread = next(n for n in notes if n.startswith("Spread"))
    assert "sparse_coding 0.520–0.550" in spread and "0.691 lies outside" in spread
    assert "sae 0.500–0.600" in spread and "0.566 lies inside" in spread
    sc.evaluations[0]["latent_mcc/test"]["replicas"] = [0.6, 0.75]
    assert "0.691 lies inside" in next(n for n in unknown([sae, sc]).notes if "Spread" in n)


def test_known_dictionary_paper_ito_is_from_scratch():
    scratch = _replicas({"name": "sae_ito", "init": "scratch"}, [0.96, 0.97], [0.0, 0.0])
    finding = known_dictionary([scratch])
    assert next(r for r in finding.table if r[0] == "sae_ito-scratch")[1] == "0.97"
    assert "0.967 lies inside" in next(n for n in finding.notes if n.startswith("Spread"))


def test_settings_name_the_draw_and_initialisation():
    job = _job(20_000, 5)
    job.config.update(init="authors", data={"draw": "authors"})
    text = settings_of(BY_NAME["known_dictionary"], [job] * 5, 5)[1]
    assert "data draw authors, initialisation authors" in text


def test_sparsity_notes_that_exp_codes_have_no_exact_zeros():
    jobs = [_result("sae", 0.6, l0=8.0, l1_coeff=c) for c in (0.01, 0.1)]
    jobs += [_result("sparse_coding", 0.7, l0=16.0, l1_coeff=c) for c in (0.01, 0.1)]
    finding = sparsity(jobs)
    assert "no larger L0 (0/2) ✗" in finding.check
    assert any("its L0 is 16 (every latent) at every λ" in n for n in finding.notes)


def test_settings_tell_paper_partial_and_reduced_runs_apart():
    preset = BY_NAME["bias"]  # 40,000 steps, 5 replicas, 6 jobs
    assert settings_of(preset, [_job(40_000, 5)] * 6, 6)[0]
    partial = settings_of(preset, [_job(40_000, 5)] * 4, 4)
    assert not partial[0] and "partial grid" in partial[1]
    reduced = settings_of(preset, [_job(200, 2)] * 6, 6)
    assert not reduced[0] and "reduced settings, not a reproduction" in reduced[1]
    assert "not run" in settings_of(preset, [], 0)[1]


def test_a_claim_with_a_failed_part_is_partly_reproduced():
    finding = Finding()
    finding.add("first", True)
    assert finding.holds and finding.verdict == "**holds**"
    finding.add("second", False)
    assert finding.holds is False and finding.verdict == "**partly** (1 of 2 parts)"
    assert "first ✓" in finding.check and "second ✗" in finding.check


def test_sweeps_are_found_by_preset_name_newest_first(tmp_path):
    for name in ("2026-01-01_00-00-00-unknown", "2026-02-01_00-00-00-unknown", "bias", "x-biasy"):
        (tmp_path / name).mkdir()
    found = find_sweeps([tmp_path], {"regimes": tmp_path / "elsewhere"})
    assert found["unknown"].name == "2026-02-01_00-00-00-unknown"
    assert found["bias"].name == "bias" and found["regimes"].name == "elsewhere"
    assert "known_codes" not in found


def test_every_result_is_listed_even_when_nothing_ran(tmp_path):
    path = write_reproduction({}, tmp_path, quick=True)
    text = path.read_text()
    assert "Quick settings" in text
    for preset in PRESETS:
        assert f"`{preset.name}`" in text and preset.where in text
    assert text.count("not run") >= len(PRESETS)


@pytest.mark.slow
@pytest.mark.paper  # minutes on 2 shared cores: `make test-slow`, not `make test`
def test_make_paper_quick_writes_reproduction_and_figures(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.report.reproduction", "run", "sweeps", "--quick",
         "--docs", "docs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (tmp_path / "docs" / "REPRODUCTION.md").read_text()
    assert "Quick settings" in text
    for preset in PRESETS:
        assert (tmp_path / "sweeps" / preset.name / "report" / "summary.md").exists(), preset.name
        assert f"## {preset.title}" in text
    assert "not run yet" not in text.lower()
    figures = list((tmp_path / "docs" / "figures" / "reproduction").glob("*.png"))
    stems = {f.name.split("_", 1)[0] for f in figures}
    assert len(figures) >= len(PRESETS) and {"regimes", "decoder", "mlp", "bias"} <= stems
    assert all(f"figures/reproduction/{f.name}" in text for f in figures)
    assert str(tmp_path) not in text  # paths in the document are relative


def test_make_paper_on_cuda_launches_k_jobs_per_gpu_as_captured_graphs(tmp_path):
    from sparsegap.report.reproduction import LAUNCH, launch, preset_command

    assert launch() == LAUNCH  # the CPU path is unchanged
    cuda = launch("cuda", 6)
    assert {"hydra/launcher=gpu", "hydra.launcher.n_jobs=6", "device=cuda",
            "device.threads=1", "skip_completed=true"} <= set(cuda)  # fmt: skip
    assert not any(o.startswith("device.graph=") for o in cuda)  # auto: captured on CUDA
    with pytest.raises(ValueError, match="device='tpu'"):
        launch("tpu")
    preset = BY_NAME["unknown"]
    command = preset_command(preset, tmp_path, quick=True, device="cuda", jobs_per_gpu=3)
    assert command[1:5] == ["-m", "sparsegap", "-m", "+experiment=unknown"]
    assert "hydra.launcher.n_jobs=3" in command and "steps=200" in command
    assert f"hydra.sweep.dir={tmp_path / 'unknown'}" in command
    assert "hydra/launcher=local" in preset_command(preset, tmp_path)


def test_make_paper_device_cuda_reaches_the_run_command():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        ["make", "-n", "paper", "DEVICE=cuda", "JOBS_PER_GPU=5", "PAPER_DIR=out"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "reproduction run out" in result.stdout
    assert "--device cuda --jobs-per-gpu 5" in result.stdout
    plain = subprocess.run(["make", "-n", "paper"], cwd=root, capture_output=True, text=True)
    assert "--device cpu" in plain.stdout
