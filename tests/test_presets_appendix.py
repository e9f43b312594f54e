"""The appendix presets (App. C decoder Gram, App. D MLP width, App. E bias, App. F classical
dictionary learning, App. F.2 top-k sparse coding): every job of each
grid composes through Hydra with the overrides the sweeper would pass, and validates."""

from __future__ import annotations

import itertools

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir

from sparsegap.registry import register_configs
from sparsegap.validate import fill_defaults, validate

GRIDS = {
    "decoder_gram": {
        "encoder": ["sae", "mlp", "sparse_coding"],
        "encoder.latents": ["10", "16", "24"],
    },
    "mlp_width": {
        "data": ["default", "medium", "hard"],
        "encoder.hidden": ["16", "32", "64", "128", "256", "512"],
    },
    "bias": {"encoder": ["sae", "mlp", "mlp_256"], "encoder.bias": ["false", "true"]},
    "classical": {"encoder": ["sklearn_dl", "dictionary_learning"]},
    "topk_sparse_coding": {
        "encoder": ["sae", "sparse_coding_1k", "sparse_coding_topk"],
        "l1_coeff": ["0.003", "0.01", "0.03", "0.1"],
    },
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_job_of_the_appendix_presets_validates(name):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in base.hydra.sweeper.params.items()}
        assert params == GRIDS[name]
        for values in itertools.product(*params.values()):
            overrides = [f"{k}={v}" for k, v in zip(params, values, strict=True)]
            cfg = compose("config", overrides=[f"+experiment={name}", "device=cpu", *overrides])
            validate(cfg)
            fill_defaults(cfg)
            assert cfg.logger.group is None  # each invocation: its sweep folder


def test_mlp_width_regimes_get_harder():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sizes = [
            compose("config", overrides=["+experiment=mlp_width", f"data={d}"]).data
            for d in ("default", "medium", "hard")
        ]
    assert [(d.N, d.M, d.K) for d in sizes] == [(16, 8, 3), (32, 12, 5), (64, 16, 9)]


def test_topk_sparse_coding_infers_k_sparse_test_codes():
    register_configs()
    overrides = ["+experiment=topk_sparse_coding", "encoder=sparse_coding_topk", "device=cpu"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)
    fill_defaults(cfg)
    assert cfg.encoder.inference.name == "topk"
    assert cfg.encoder.inference.k == cfg.data.K == 3
    assert cfg.steps == 20000 and cfg.encoder.inference.iterations == 1000
