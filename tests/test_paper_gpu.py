"""The whole-paper GPU measurement (sparsegap/bench/paper_gpu.py): what runs without a GPU —
its refusal here and its projection of `make paper DEVICE=cuda`."""

from __future__ import annotations

import pytest
import torch

from sparsegap.bench import paper_gpu
from sparsegap.report.reproduction import BY_NAME, PRESETS


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_it_refuses_without_a_gpu(capsys):
    assert paper_gpu.main(["--out", "unused"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_projection_measures_what_ran_and_scales_the_rest_by_jobs_and_steps():
    rows = {r["preset"]: r for r in paper_gpu.project({"unknown": 60.0, "regimes_k3": 50.0})}
    assert set(rows) == {p.name for p in PRESETS}
    assert rows["unknown"]["seconds"] == 60.0 and rows["unknown"]["how"] == "measured"
    assert rows["regimes"]["seconds"] == 150.0
    unknown, sparsity = BY_NAME["unknown"], BY_NAME["sparsity"]
    per_job_step = 60.0 / (unknown.jobs * unknown.steps)
    assert rows["sparsity"]["seconds"] == pytest.approx(
        per_job_step * sparsity.jobs * sparsity.steps
    )


def test_markdown_lists_the_total_of_the_projection():
    result = {"device": "H100", "torch": "2.13",
              "projection": paper_gpu.project({"unknown": 60.0})}  # fmt: skip
    text = paper_gpu.markdown(result)
    total = sum(r["seconds"] for r in result["projection"])
    assert f"**{total:.0f}**" in text and "| regimes |" in text
