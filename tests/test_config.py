"""Invalid configurations fail before anything runs, with the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, run_cli

from sparsegap.config import ConfigError
from sparsegap.validate import validate

BAD_VALUES = [
    (["data.K=20"], "data.K=20", "between 1 and data.N=16"),
    (["data.K=0"], "data.K=0", "between 1"),
    (["data.M=0"], "data.M=0", "at least 1"),
    (["data.N=0", "data.K=1"], "data.N=0", "at least 1"),
    (["data.train_samples=1"], "data.train_samples=1", "at least 2"),
    (["data.test_samples=0"], "data.test_samples=0", "at least 2"),
    (["data.noise_std=-0.1"], "data.noise_std=-0.1", ">= 0"),
    (
        ["data.magnitude=cauchy"],
        "data.magnitude='cauchy'",
        "abs_normal, normal, exponential, uniform",
    ),
    (["encoder=mlp", "encoder.hidden=0"], "encoder.hidden=0", "at least 1"),
    (["encoder.latents=0"], "encoder.latents=0", "at least 1"),
    (["lr=0"], "lr=0", "positive"),
    (["lr=-1e-3"], "lr=-0.001", "positive"),
    (["steps=-5"], "steps=-5", ">= 0"),
    (["replicas=0"], "replicas=0", "at least 1"),
    (["eval_every=0"], "eval_every=0", "at least 1"),
    (["l1_coeff=-1"], "l1_coeff=-1", ">= 0"),
    (
        ["encoder=sae_ito", "encoder.inference.iterations=-1"],
        "encoder.inference.iterations=-1",
        ">= 0",
    ),
    (["encoder=sae_ito", "encoder.inference.lr=0"], "encoder.inference.lr=0", "positive"),
    (["encoder=sae_ito", "encoder.init=zeros"], "encoder.init='zeros'", "sae, scratch"),
    (
        ["encoder=sparse_coding", "encoder.inference.name=magic"],
        "encoder.inference.name='magic'",
        "adam_log",
    ),
    (
        ["logger=wandb", "logger.mode=sometimes"],
        "logger.mode='sometimes'",
        "offline, online, disabled",
    ),
    (["metrics.dictionary_similarity=l2"], "metrics.dictionary_similarity='l2'", "pearson, cosine"),
    (["device.threads=0"], "device.threads=0", "at least 1"),
    (["scenario.cosine=feature"], "scenario.cosine='feature'", "latent, sample"),
    (
        ["scenario=known_codes", "scenario.cosine=sample", "data.importance=decay"],
        "scenario.cosine=sample",
        "scenario.cosine=latent",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_value_names_key_value_and_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides))
    assert key in str(info.value)
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("scenario", "encoder"),
    [
        ("known_codes", "sparse_coding"),
        ("known_codes", "sae_ito"),
        ("known_dictionary", "sparse_coding"),
    ],
)
def test_impossible_scenario_encoder_pair_says_why_and_what_applies(scenario, encoder):
    with pytest.raises(ConfigError) as info:
        validate(compose_config([f"scenario={scenario}", f"encoder={encoder}"]))
    message = str(info.value)
    assert f"encoder={encoder} does not apply to scenario={scenario}" in message
    assert "§3.5" in message
    assert "Encoders for this scenario:" in message


@pytest.mark.parametrize("scenario", ["known_codes", "known_dictionary"])
def test_known_codes_or_dictionary_need_as_many_latents_as_sources(scenario):
    with pytest.raises(ConfigError, match=r"encoder\.latents=10 .* needs data\.N=16 latents"):
        validate(compose_config([f"scenario={scenario}", "encoder.latents=10"]))


def test_unknown_scenario_allows_other_latent_counts(tmp_path):
    validate(compose_config(["encoder.latents=10"]))
    validate(compose_config(["encoder.latents=24"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(ConfigError, match="device=cuda is invalid: no CUDA GPU"):
        validate(compose_config(["device=cuda"], fast=False))


def test_valid_defaults_pass():
    validate(compose_config([], fast=False))


def test_cli_bad_value_exits_2_with_one_line_and_trains_nothing(tmp_path):
    result = run_cli(["data.K=20", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: data.K=20 is invalid: must be between 1 and data.N=16"]
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_cli_unknown_encoder_name_lists_the_options(tmp_path):
    result = run_cli(["encoder=transformer", "logger=none"], cwd=tmp_path)
    assert result.returncode != 0
    assert "encoder='transformer'" in result.stderr
    for name in ("sae", "mlp", "sparse_coding", "sae_ito"):
        assert name in result.stderr
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_cli_wrong_type_names_the_key(tmp_path):
    result = run_cli(["data.N=many", "logger=none"], cwd=tmp_path)
    assert result.returncode != 0
    assert "data.N" in result.stderr
    assert not list(tmp_path.rglob("metrics.jsonl"))
