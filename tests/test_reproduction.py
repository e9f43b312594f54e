"""``make paper``'s REPRODUCTION.md: settings detection, sweep discovery, claim verdicts (fast),
and the whole QUICK path end to end (``paper`` marker: only ``make test-slow`` runs it)."""

from __future__ import annotations

import json
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
    sweeps_of,
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
    note = next(n for n in finding.why if n.startswith("Where M ≥ N"))  # why the part fails
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


def test_unknown_states_nothing_about_our_runs_that_is_not_computed():
    sc = _replicas({"name": "sparse_coding"}, [0.52, 0.55], [0.0, 0.0])
    sae = _replicas({"name": "sae"}, [0.5, 0.6], [0.0, 0.0])
    text = " ".join(unknown([sae, sc]).notes)
    # The notes give the paper's numbers and what the code does, never a number of ours.
    assert "0.538" not in text and "0.72" not in text and "0.52" not in text


def test_known_dictionary_paper_ito_is_from_scratch():
    scratch = _replicas({"name": "sae_ito", "init": "scratch"}, [0.96, 0.97], [0.0, 0.0])
    finding = known_dictionary([scratch])
    assert next(r for r in finding.table if r[0] == "sae_ito-scratch")[1] == "0.967"


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
    assert any("its L0 is 16 (every latent) at every λ" in n for n in finding.why)


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
    for name in ("2026-01-01_00-00-00-unknown", "2026-02-01_00-00-00-unknown", "bias", "x-biasy",
                 "unknown-authors", "bias-authors"):  # fmt: skip
        (tmp_path / name).mkdir()
    found = find_sweeps([tmp_path], {"regimes": tmp_path / "elsewhere"})
    assert found["unknown"].name == "2026-02-01_00-00-00-unknown"
    assert found["unknown-authors"].name == "unknown-authors"
    assert found["bias"].name == "bias" and found["regimes"].name == "elsewhere"
    assert "known_codes" not in found and "bias-authors" not in found  # bias has no such sweep


def test_every_result_is_listed_even_when_nothing_ran(tmp_path):
    path = write_reproduction({}, tmp_path, quick=True)
    text = path.read_text()
    assert "Quick settings" in text
    for preset in PRESETS:
        assert f"`{preset.name}`" in text and preset.where in text
    assert text.count("not run") >= len(PRESETS)
    assert "Not rerun for this version" not in text


def test_results_not_rerun_point_to_the_previous_document(tmp_path):
    old = "REPRODUCTION-2026-11-26.md"
    text = write_reproduction({}, tmp_path, previous=old).read_text()
    assert text.count(f"[{old}]({old})") == len(PRESETS)


def _draw(encoder: dict, seed: int, mcc: list[float], steps=(0, 20_000), **top) -> Job:
    """A job of a data-seed sweep: ``mcc`` per replica at its last evaluation."""
    data = {"seed": seed, "N": 16, "M": 8, "K": 3}
    config = {"steps": steps[-1], "replicas": len(mcc), "eval_every": steps[-1] - steps[-2],
              "encoder": encoder, "data": data, **top}  # fmt: skip
    records = [
        {
            "step": s,
            "latent_mcc/test": {"mean": sum(mcc) / len(mcc), "replicas": mcc},
            "flops/train_cumulative": 1e3 * (s + 1),
        }
        for s in steps
    ]
    return Job(Path("j"), "j", "completed", None, config, [], 1.0, records)


SAE, MLP = {"name": "sae"}, {"name": "mlp", "hidden": 32}


def _row(finding: Finding, label: str) -> dict[str, str]:
    return dict(zip(finding.table[0], next(r for r in finding.table if r[0] == label), strict=True))


def test_paper_inside_the_prediction_interval_flips_when_ours_moves_away():
    sae = [_draw(SAE, s, [0.84 + 0.01 * s, 0.86 + 0.01 * s]) for s in range(3)]
    row = _row(known_codes(sae), "sae")
    # Per-draw means 0.85, 0.86, 0.87: 0.86 ± t(2)·0.01·√(1 + 1/3), t(2) = 4.303.
    assert row["ours: mean over data draws"] == "0.860 (3 draws, 6 replicas)"
    assert row["95 % prediction interval (one draw)"] == "[0.810, 0.910]"
    assert row["95 % CI of the mean"] == "[0.835, 0.885]"
    assert row["paper inside"] == "yes"  # the paper's 0.862
    far = [_draw(SAE, s, [0.94 + 0.01 * s, 0.96 + 0.01 * s]) for s in range(3)]
    assert _row(known_codes(far), "sae")["paper inside"] == "**no**"


def test_one_data_draw_falls_back_to_mean_and_std_without_interval():
    sae = [_draw(SAE, 0, [0.85, 0.87])]
    mlp = [_draw(MLP, 0, [0.95, 0.97])]
    finding = known_codes(sae + mlp)
    row = _row(finding, "sae")
    assert row["ours: mean over data draws"] == "0.860 ± 0.014 (one draw, 2 replicas)"
    assert row["95 % CI of the mean"] == row["95 % prediction interval (one draw)"] == "–"
    assert row["paper inside"] == "– (no interval)"
    assert "(mlp-32 +0.100 (one draw)) ✓" in finding.check  # the point difference decides


def test_claims_use_the_interval_of_differences_paired_by_draw():
    # The draw moves both methods: the MLP is 0.03 above the SAE on every draw.
    sae = [_draw(SAE, s, [0.7 + 0.05 * s]) for s in range(4)]
    mlp = [_draw(MLP, s, [0.73 + 0.05 * s + 0.002 * (s % 2)]) for s in range(4)]
    assert (
        "every MLP above the SAE (mlp-32 +0.031 [+0.027, +0.035]) ✓" in known_codes(sae + mlp).check
    )
    # Above on average but not on every draw: the prediction interval holds 0.
    mlp = [_draw(MLP, s, [0.7 + 0.05 * s + (0.06 if s % 2 else -0.02)]) for s in range(4)]
    finding = known_codes(sae + mlp)
    assert "every MLP above the SAE (mlp-32 +0.020 [" in finding.check and ") ✗" in finding.check
    assert "mlp-32 − sae: mlp-32 is at or below sae on 2 of 4 draws." in finding.why


def test_authors_draw_column_is_its_replicas_mean_and_std():
    sae = [_draw(SAE, s, [0.6, 0.62]) for s in range(2)]
    authors = [_draw(SAE, 20240625, [0.6, 0.61, 0.62], init="authors")]
    finding = known_dictionary(sae, authors)
    assert _row(finding, "sae")["ours on the authors' draw"] == "0.610 ± 0.010 (3 replicas)"
    assert _row(finding, "mlp-256")["ours on the authors' draw"] == "not run"
    assert _row(known_dictionary(sae), "sae")["ours on the authors' draw"] == "not run"


def test_sparse_coding_dip_is_read_where_the_evaluations_are_dense():
    sc = [_draw({"name": "sparse_coding"}, s, [0.7], steps=(0, 5_000, 40_000)) for s in range(2)]
    sae = [_draw(SAE, s, [0.5], steps=(0, 5_000, 40_000)) for s in range(2)]
    finding = unknown(sae + sc)
    assert "dips" not in finding.check and any("dip is not checked" in n for n in finding.notes)
    dense = _draw({"name": "sparse_coding"}, 20240926, [0.7], steps=(0, 500, 1_000, 40_000))
    dense.evaluations[1]["latent_mcc/test"] = {"replicas": [0.6]}
    assert "SC dips first (by 0.100 in the first 10 % of steps, on the authors' draw) ✓" in (
        unknown(sae + sc, [dense]).check
    )


def test_seeded_presets_sweep_data_seeds_and_the_authors_draw():
    sweeps = dict(sweeps_of(BY_NAME["known_dictionary"], quick=False))
    assert sweeps["known_dictionary"] == ["data.seed=0,1,2,3,4", "replicas=3", "eval_every=5000"]
    authors = sweeps["known_dictionary-authors"]
    assert "data.draw=authors" in authors and "init=authors" in authors
    assert "data.seed=20240625" in authors and "eval_every=1000" in authors
    assert "data.seed=20240926" in dict(sweeps_of(BY_NAME["unknown"], False))["unknown-authors"]
    quick = dict(sweeps_of(BY_NAME["known_dictionary"], quick=True))
    for overrides in quick.values():  # one value per key, the quick one
        keys = [o.partition("=")[0] for o in overrides]
        assert len(keys) == len(set(keys)) and "replicas=2" in overrides
        assert "eval_every=100" in overrides
    assert "data.seed=0,1" in quick["known_dictionary"]
    assert [name for name, _ in sweeps_of(BY_NAME["bias"], False)] == ["bias"]


def test_settings_of_a_sweep_over_data_draws_is_not_called_reduced():
    preset = BY_NAME["known_codes"]  # 4 jobs, 5 replicas in the paper
    jobs = [_draw(SAE, s, [0.8] * 3) for s in range(5) for _ in range(preset.jobs)]
    at_paper, text, label = settings_of(preset, jobs, len(jobs))
    assert at_paper and label == "paper, 5 draws × 3 replicas"
    assert "data seeds 0/1/2/3/4 × replicas 3" in text and "full grid 20" in text
    assert "evaluation every 20,000 steps" in text
    _, _, label = settings_of(preset, jobs[:-1], len(jobs))
    assert label == "paper, 5 draws × 3 replicas, partial grid"
    one_draw = [_draw(SAE, 0, [0.8] * 3)] * preset.jobs  # 3 replicas of one draw: reduced
    assert settings_of(preset, one_draw, preset.jobs)[2] == "reduced"


def _folder(path: Path, job: Job) -> None:
    path.mkdir(parents=True)
    summary = {"status": "completed", "config": job.config, "wall_time_s": 1.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in job.evaluations) + "\n")


def test_write_finds_both_sweeps_and_states_intervals(tmp_path):
    scenario = {"scenario": {"name": "known_codes"}}
    jobs = [_draw(e, s, [0.85 + 0.01 * s + 0.02 * (e is MLP)] * 3, **scenario)
            for s in range(5) for e in (SAE, MLP)]  # fmt: skip
    for i, job in enumerate(jobs):
        _folder(tmp_path / "sweeps" / "known_codes" / str(i), job)
    authors = _draw(SAE, 20240625, [0.86, 0.87, 0.88, 0.86, 0.88], **scenario)
    _folder(tmp_path / "sweeps" / "known_codes-authors" / "0", authors)
    sweeps = find_sweeps([tmp_path / "sweeps"], {})
    assert set(sweeps) == {"known_codes", "known_codes-authors"}
    text = write_reproduction(sweeps, tmp_path / "docs").read_text()
    assert "mean of 5 replicas on ONE data draw" in text  # the statistics sentence
    assert "| sae | 0.862 ± 0.025 | 0.870 (5 draws, 15 replicas) |" in text
    assert "| yes | 0.870 ± 0.010 (5 replicas) |" in text
    assert "On the authors' draw (`" in text and "data seed 20240625, replicas 5" in text
    assert "every MLP above the SAE (mlp-32 +0.020 [+0.020, +0.020]) ✓" in text
    assert str(tmp_path) not in text


@pytest.mark.slow
@pytest.mark.paper  # minutes on 2 shared cores: `make test-slow`, not `make test`
def test_make_paper_quick_writes_reproduction_and_figures(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.report.reproduction", "run", "sweeps", "--quick",
         "--docs", "docs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
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


def test_a_report_older_than_a_job_is_written_again(tmp_path):
    import os

    from sparsegap.report.reproduction import ensure_report

    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "summary.json").write_text("{}")
    report = tmp_path / "sweep" / "report"
    report.mkdir()
    (report / "summary.md").write_text("stale")
    os.utime(report / "summary.md", (0, 0))  # written before the job finished
    ensure_report(tmp_path / "sweep")
    assert (report / "summary.md").read_text() != "stale"
