"""The frontier report (issue 4): the Pareto front on known points, the amortisation-gap
statement, the preset's methods, and the report produced from real (tiny) runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from helpers import CONF, compose_config

from sparsegap.__main__ import run
from sparsegap.model import build
from sparsegap.report.__main__ import make_report, summary_table
from sparsegap.report.aggregate import caveats, group, summary_rows
from sparsegap.report.collect import Job, load_jobs
from sparsegap.report.frontier import Point, gap_statement, pareto_front, points_of

NAN = math.nan


def test_pareto_front_on_known_points():
    costs = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0, NAN, 1.5, 3.0]
    values = [0.5, 0.7, 0.6, 0.9, 0.7, 0.9, 1.0, 0.4, 0.95]
    # 0: cheapest. 1 and 4: equal, both kept. 2: dominated by 1. 3: dominated by 8 (3.0, 0.95).
    # 5: dominated by 3 and 8. 6: no cost, ignored. 7: dominated by 0. 8: best value.
    assert pareto_front(costs, values) == [0, 1, 4, 8]
    assert pareto_front([1.0], [NAN]) == []
    assert pareto_front([], []) == []
    # Strictly better and cheaper in order: every point is on the front.
    assert pareto_front([3.0, 1.0, 2.0], [0.9, 0.1, 0.5]) == [1, 2, 0]


def _point(label: str, iterative: bool, mcc: float, flops: float, dictionary: float = NAN):
    return Point(label, iterative, 5, 100, (mcc, 0.01), (dictionary, 0.0), flops, 0.0, 1.0)


def test_gap_statement_compares_best_one_pass_with_best_iterative():
    points = [
        _point("sae", False, 0.57, 6e10, 0.70),
        _point("mlp-256", False, 0.63, 1.4e12, 0.84),
        _point("sparse_coding", True, 0.60, 3e10, 0.80),
        _point("dictionary_learning-fista", True, 0.98, 1e11, 0.999),
    ]
    text = gap_statement(points)
    assert "best one-pass encoder, MLP (hidden 256)" in text
    assert "best iterative method, dictionary learning (alt. min., FISTA)" in text
    assert "**+0.350 latent MCC**" in text and "**+0.159**" in text  # 0.98 − 0.63, 0.999 − 0.84
    # Matched compute: dictionary learning costs less than the MLP.
    assert "FISTA) costs no more than MLP (hidden 256): the gap holds at matched compute" in text
    # Against the SAE alone, only sparse coding is as cheap: +0.03 at matched compute.
    text = gap_statement([points[0], *points[2:]])
    assert "At matched compute (total FLOPs ≤ SAE's), the best iterative method is sparse" in text
    assert "(+0.030)" in text
    assert "No amortisation gap" in gap_statement(points[:2])


def test_the_preset_sweeps_every_method_with_its_training_length():
    preset = yaml.safe_load((CONF / "experiment" / "frontier.yaml").read_text())
    methods = preset["hydra"]["sweeper"]["params"]["+method"].split(",")
    assert len(methods) == 14 and len(set(methods)) == 14
    known = yaml.safe_load((CONF / "experiment" / "frontier_known_dictionary.yaml").read_text())
    known_methods = known["hydra"]["sweeper"]["params"]["+method"].split(",")
    assert {p.stem for p in (CONF / "method").glob("*.yaml")} == set(methods) | set(known_methods)
    for method in ("sae", "dictionary_learning"):
        overrides = ["+experiment=frontier", f"+method={method}", "scenario.steps=1234"]
        cfg = compose_config(overrides, fast=False)
        assert cfg.encoder.name == method and cfg.scenario.name == "unknown"
        assert cfg.steps == (300 if method == "dictionary_learning" else 1234)


def test_the_known_dictionary_preset_runs_only_methods_that_apply():
    preset = yaml.safe_load((CONF / "experiment" / "frontier_known_dictionary.yaml").read_text())
    for method in preset["hydra"]["sweeper"]["params"]["+method"].split(","):
        cfg = compose_config(["+experiment=frontier_known_dictionary", f"+method={method}"])
        assert cfg.scenario.name == "known_dictionary"
        build(cfg)  # validation and construction: a method that cannot use a fixed dictionary fails
    scratch = compose_config(
        ["+experiment=frontier_known_dictionary", "+method=sae_ito_fista_scratch"]
    )
    assert scratch.encoder.init == "scratch"


TINY = ["steps=20", "eval_every=10", "data.train_samples=256", "data.test_samples=128",
        "device.threads=1", "progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def frontier_runs(tmp_path_factory):
    """Four real short runs of the frontier preset: two one-pass, two iterative methods."""
    root = tmp_path_factory.mktemp("frontier")
    methods = {
        "sae": [],
        "topk": [],
        "sparse_coding_fista": ["encoder.inference.iterations=50"],
        "dictionary_learning": ["encoder.restarts=0"],
    }
    for method, extra in methods.items():
        cfg = compose_config(["+experiment=frontier", f"+method={method}", *TINY, *extra])
        run(cfg, root / method)
    return root


def test_frontier_report_from_real_runs(frontier_runs):
    result = make_report(frontier_runs)
    out = result["out"]
    text = (out / "frontier.md").read_text()
    assert "**Amortisation gap.**" in text
    names = ["SAE", "TopK SAE", "sparse coding (FISTA)", "dictionary learning (alt. min., FISTA)"]
    assert all(f"| {name} |" in text for name in names)
    figure = next(p for p in result["figures"] if p.name.startswith("frontier_"))
    assert figure.suffix == ".png" and figure.stat().st_size > 10_000
    # The ✓ column is the brute-force Pareto front of the points read from the runs.
    points = points_of(next(iter(group(load_jobs(frontier_runs)).values())))
    assert len(points) == 4
    for p in points:
        assert p.replicas == 2 and math.isfinite(p.latent_mcc[0]) and p.flops_inference > 0
        dominated = any(
            q.flops_total <= p.flops_total
            and q.latent_mcc[0] >= p.latent_mcc[0]
            and (q.flops_total < p.flops_total or q.latent_mcc[0] > p.latent_mcc[0])
            for q in points
        )
        row = re.search(rf"^\| {re.escape(p.name)} \|.*\|([^|]*)\|$", text, re.M)
        assert row is not None and (row.group(1).strip() == "✓") == (not dominated)


def _job(encoder: str, steps: list[int], mccs: list[float], paper_steps: int = 40_000) -> Job:
    """A completed job of ``encoder`` whose test latent MCC was ``mccs`` at ``steps``."""
    config = {
        "scenario": {"name": "unknown", "steps": paper_steps},
        "data": {"N": 16, "M": 8, "K": 3},
        "encoder": {"name": encoder},
        "l1_coeff": 0.01,
        "steps": steps[-1],
    }
    evaluations = [
        {
            "step": step,
            "latent_mcc/test": {"mean": mcc, "std": 0.0, "replicas": [mcc, mcc]},
            "flops/train_cumulative": 1e6 * step,
            "flops/inference_test": 1e5 * (10 if encoder == "sparse_coding" else 1),
        }
        for step, mcc in zip(steps, mccs, strict=True)
    ]
    return Job(Path(encoder), encoder, "completed", None, config, [], 1.0, evaluations)


def test_short_or_still_rising_runs_carry_a_caveat_beside_the_gap():
    full = list(range(0, 40_001, 10_000))
    flat = {"sae": [0.5, 0.60, 0.70, 0.70, 0.70], "sparse_coding": [0.5, 0.4, 0.8, 0.9, 0.9]}
    jobs = [_job(encoder, full, mccs) for encoder, mccs in flat.items()]
    assert [caveats([j]) for j in jobs] == [[], []]
    text = gap_statement(points_of({j.label: [j] for j in jobs}))
    assert "**+0.200 latent MCC**." in text and "provisional" not in text

    # 500 of 40,000 steps, sparse coding still climbing out of its early dip
    short = [_job("sae", [0, 250, 500], [0.5, 0.6, 0.6]),
             _job("sparse_coding", [0, 250, 500], [0.3, 0.35, 0.55])]  # fmt: skip
    assert caveats(short[:1]) == ["short run: 500 of the paper's 40,000 steps"]
    assert caveats(short[1:]) == [
        "short run: 500 of the paper's 40,000 steps",
        "MCC still rising at the last evaluations",
    ]
    text = gap_statement(points_of({j.label: [j] for j in short}))
    gap = "**-0.050 latent MCC** (provisional, not converged: SAE: short run: 500 of the paper's"
    assert gap in text
    assert (
        "sparse coding (Adam): short run: 500 of the paper's 40,000 steps; MCC still rising" in text
    )
    # a full-length run that is still rising is flagged too
    assert caveats([_job("sae", full, [0.5, 0.6, 0.7, 0.8, 0.9])]) == [
        "MCC still rising at the last evaluations"
    ]


def test_the_summary_table_shows_the_caveat_beside_the_mcc():
    short = _job("sae", [0, 250, 500], [0.5, 0.6, 0.6])
    table = summary_table(summary_rows([short]))
    header, _, row = table.splitlines()
    cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert cells["caveat"] == "short run: 500 of the paper's 40,000 steps"
    assert cells["final test latent MCC"] == "0.600 ± 0.000"
