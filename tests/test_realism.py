"""The realism preset (support law × correlation × hierarchy × noise, four encoders with FISTA
inference for the iterative ones): every job composes through Hydra and validates; the report's
per-condition gap figure."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir

from sparsegap.registry import register_configs
from sparsegap.report.collect import Job
from sparsegap.report.figures import data_conditions, gap_figures
from sparsegap.validate import fill_defaults, validate

GRID = {
    "encoder": ["sae", "mlp", "sparse_coding_fista", "sae_ito_fista"],
    "data.frequencies": ["uniform", "zipf"],
    "data.correlation_rank": ["0", "4"],
    "data.hierarchy_depth": ["0", "1"],
    "data.snr_db": ["null", "20"],
}


def test_every_job_of_the_realism_preset_composes_and_validates():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("config", overrides=["+experiment=realism"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in base.hydra.sweeper.params.items()}
        assert params == GRID
        assert base.hydra.sweep.dir.endswith("-realism") and base.logger.group is None
        jobs = list(itertools.product(*params.values()))
        assert len(jobs) == 64
        for values in jobs:
            overrides = [f"{k}={v}" for k, v in zip(params, values, strict=True)]
            cfg = compose("config", overrides=["+experiment=realism", "device=cpu", *overrides])
            validate(cfg)
            fill_defaults(cfg)
            assert cfg.scenario.name == "unknown" and cfg.data.support == "bernoulli"
            if cfg.encoder.name in ("sparse_coding", "sae_ito"):
                inference = cfg.encoder.inference
                assert (inference.name, inference.l1_coeff) == ("fista", 0.032)


def _job(name: str, encoder: str, zipf: bool, mcc: float, dictionary: float) -> Job:
    config = {
        "scenario": {"name": "unknown"},
        "data": {"N": 16, "M": 8, "K": 3, "seed": 0, "frequencies": "zipf" if zipf else "uniform"},
        "encoder": {"name": encoder},
        "l1_coeff": 0.01,
    }
    evaluations = [
        {"step": 0, "latent_mcc/test": {"replicas": [0.1, 0.1]}},
        {
            "step": 10,
            "latent_mcc/test": {"replicas": [mcc - 0.01, mcc + 0.01]},
            "dictionary_mcc": {"replicas": [dictionary, dictionary]},
        },
    ]
    return Job(Path(name), name, "completed", None, config, [], 1.0, evaluations)


def test_gap_figure_per_data_condition(tmp_path):
    jobs = [
        _job("0", "sae", False, 0.6, 0.7),
        _job("1", "sparse_coding", False, 0.9, 0.95),
        _job("2", "sae_ito", False, 0.8, 0.7),
        _job("3", "mlp", False, 0.65, 0.8),
        _job("4", "sae", True, 0.5, 0.6),
        _job("5", "sparse_coding", True, 0.4, 0.5),
        _job("6", "mlp", True, 0.55, 0.6),
    ]
    assert data_conditions(jobs) == ["data.frequencies"]
    paths = gap_figures(jobs, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        f"gap_{m}.{e}" for m in ("dictionary_mcc", "latent_mcc") for e in ("pdf", "png")
    ]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert gap_figures(jobs[:4], tmp_path / "none") == []  # one data condition: no figure


@pytest.mark.parametrize("encoder", ["sae_ito_fista", "sparse_coding_fista"])
def test_fista_encoder_presets(encoder):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"encoder={encoder}"])
    assert cfg.encoder.name == encoder.removesuffix("_fista")
    assert cfg.encoder.inference.name == "fista" and cfg.encoder.inference.l1_coeff == 0.032
