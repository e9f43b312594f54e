"""The GPU benchmark's CPU path (--small): a framework row through main() and the check that the
prototype fast SAE step takes exactly the framework's steps. (Its harvesting rows run the code
tests/test_lm_pipeline.py covers; they are left to `make bench-gpu`.)"""

from __future__ import annotations

import re

import torch

from sparsegap.bench import gpu as bench_gpu


def test_bench_gpu_small_on_cpu(capsys):
    threads = torch.get_num_threads()
    try:
        args = ["--small", "--device", "cpu", "--seconds", "0.05", "--only", "framework fp32"]
        code = bench_gpu.main(args)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "device: cpu" in out and "torch " in out
    for row in ("SAE 64→512: framework fp32", "MLP 64→128→512: framework fp32"):
        line = next(line for line in out.splitlines() if row in line)
        assert " M " in line, line  # a measured rate, not "failed"
    assert "prototype vs framework, fp32, 5 steps" in out


def test_prototype_step_matches_the_framework_and_moves():
    shape = bench_gpu.SMALL
    trainer, model = bench_gpu.framework_step(shape, "sae", torch.device("cpu"), lr=1e-3)
    before = model.decoder.weight[0].clone()
    assert bench_gpu.check_fast_step(shape, torch.device("cpu")) < 1e-5
    trainer()
    assert (model.decoder.weight[0] - before).abs().max() > 1e-5


def test_site_for_a_foreign_python_holds_packages_and_their_metadata(tmp_path, capsys):
    from importlib import metadata

    site = tmp_path / "site"
    (site / "stale").mkdir(parents=True)  # a fresh copy: whatever was there goes
    assert bench_gpu.main(["--write-site", str(site)]) == 0
    assert f"{len(bench_gpu.SITE_DISTRIBUTIONS)} distributions" in capsys.readouterr().out
    assert not (site / "stale").exists() and not list(site.rglob("*.pyc"))
    dists = metadata.distributions(path=[str(site)])
    found = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in dists}
    # jaxtyping's pytest plugin asks typeguard's version: the metadata must travel too
    assert found.keys() == set(bench_gpu.SITE_DISTRIBUTIONS), found
    assert found["omegaconf"] == metadata.version("omegaconf")
    assert (site / "hydra" / "__init__.py").is_file()
    assert (site / "transformer_lens" / "model_bridge").is_dir()
