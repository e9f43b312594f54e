"""Width (App. D) and bias (App. E) ablation figures, from synthetic job records (no training)."""

from __future__ import annotations

from pathlib import Path

from sparsegap.report.ablations import bias_figures, bias_groups, final_stats, width_figures
from sparsegap.report.collect import Job


def _job(name: str, encoder: dict, regime=(16, 8, 3), mcc=(0.6, 0.7)) -> Job:
    n, m, k = regime
    config = {
        "scenario": {"name": "unknown"},
        "data": {"N": n, "M": m, "K": k},
        "encoder": encoder,
        "l1_coeff": 0.01,
    }
    metrics = ("latent_mcc/test", "dictionary_mcc", "loss/mse/test", "l0/test")
    evaluations = [
        {"step": step, **{key: {"replicas": [v * step / 10 for v in mcc]} for key in metrics}}
        for step in (0, 10)
    ]
    return Job(Path(name), name, "completed", None, config, [], 1.0, evaluations)


def test_final_stats_pool_replicas_at_the_last_evaluation():
    mean, std = final_stats([_job("a", {"name": "sae"}), _job("b", {"name": "sae"}, mcc=(0.8,))],
                            "latent_mcc/test")  # fmt: skip
    assert abs(mean - 0.7) < 1e-12 and std > 0


def test_width_figure_needs_three_widths_and_draws_one_line_per_regime(tmp_path):
    two = [_job(f"w{h}", {"name": "mlp", "hidden": h}) for h in (32, 256)]
    assert width_figures(two, tmp_path) == []
    jobs = [
        _job(f"{r}-{h}", {"name": "mlp", "hidden": h}, regime=r)
        for r in ((16, 8, 3), (32, 12, 5))
        for h in (16, 64, 256)
    ]
    paths = width_figures([*jobs, _job("sae", {"name": "sae"})], tmp_path)
    assert {p.name for p in paths} == {"width_unknown.png", "width_unknown.pdf"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_bias_figure_pairs_methods_with_and_without_biases(tmp_path):
    jobs = [
        _job(f"{name}-{bias}", {"name": name, "bias": bias, **extra})
        for name, extra in (("sae", {}), ("mlp", {"hidden": 32}))
        for bias in (False, True)
    ] + [_job("sc", {"name": "sparse_coding"})]  # one bias setting only: not in the figure
    assert set(bias_groups(jobs)["unknown"]) == {"sae", "mlp-32"}
    paths = bias_figures(jobs, tmp_path)
    assert {p.name for p in paths} == {"bias_unknown.png", "bias_unknown.pdf"}
    assert bias_figures(jobs[:1] + jobs[2:], tmp_path) != []  # the MLP pair alone still counts
    assert bias_figures([jobs[0], jobs[2]], tmp_path) == []
