"""data=lm configuration: invalid values stop before anything runs, naming the key, the value
and what is allowed; a hub name without network fails fast with how to use local files."""

from __future__ import annotations

import copy
import time

import pytest
from helpers import compose_config
from omegaconf import OmegaConf

from sparsegap.config import ConfigError
from sparsegap.validate import validate


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A model folder (only its config.json is looked at before loading) and a text file."""
    root = tmp_path_factory.mktemp("lm-config")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "corpus.txt").write_text("some text\n")
    return ["data=lm", f"data.model_path={root / 'model'}", f"data.text_files={root}/*.txt"]


# Config groups that must be composed; plain values are set on one composed config (faster).
COMPOSED = [
    (["scenario=known_codes"], "scenario=known_codes does not apply to data=lm", "unknown"),
    (["encoder=sparse_coding"], "encoder=sparse_coding does not apply to data=lm", "mlp, sae"),
    (["encoder=dictionary_learning"], "encoder=dictionary_learning", "per sample"),
    (["encoder=topk"], "encoder.k=None", "set encoder.k"),
    (["+cache=build", "cache.dtype=int4", "data.cache=x"], "cache.dtype='int4'", "float32"),
    (["+cache=build", "data.cache=somewhere"], "data.cache='somewhere'", "must be null"),
]
VALUES = [
    ("data.context", 1, "data.context=1", "at least 2"),
    ("data.dtype", "int8", "data.dtype='int8'", "float32, bfloat16, float16"),
    ("data.tokens", 100, "data.tokens=100", "at least data.batch_tokens=4096"),
    ("data.shuffle_tokens", 10, "data.shuffle_tokens=10", "0 (no shuffling)"),
    ("data.model_device", "tpu", "data.model_device='tpu'", "cpu, cuda, mps"),
    ("device.autocast", "fp8", "device.autocast='fp8'", "none, bf16"),
    ("lr_warmup_steps", -1, "lr_warmup_steps=-1", ">= 0"),
    ("metrics.dead_window", 0, "metrics.dead_window=0", "at least 1"),
    ("data.cache", "no/such/folder", "data.cache='no/such/folder'", "+cache=build"),
    ("data.text_files", "no/such/*.txt", "data.text_files='no/such/*.txt'", "matches no file"),
    ("data.model_path", "no/such/model", "data.model_path='no/such/model'", "save_pretrained"),
]


def test_bad_lm_groups_name_key_value_and_allowed(local):
    for overrides, key, allowed in COMPOSED:
        with pytest.raises(ConfigError) as info:
            validate(compose_config([*local, *overrides]))
        assert key in str(info.value) and allowed in str(info.value), (overrides, info.value)


def test_bad_lm_values_name_key_value_and_allowed(local):
    base = compose_config(local)
    validate(copy.deepcopy(base))  # the base is valid
    for path, value, key, allowed in VALUES:
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, path, value)
        with pytest.raises(ConfigError) as info:
            validate(cfg)
        assert key in str(info.value) and allowed in str(info.value), (path, info.value)


def test_synthetic_runs_cannot_resume_or_harvest():
    with pytest.raises(ConfigError, match=r"resume=True is invalid: .*need data=lm"):
        validate(compose_config(["resume=true"]))
    with pytest.raises(ConfigError, match="harvesting activations needs data=lm"):
        validate(compose_config(["+cache=build"]))


def test_hub_name_offline_fails_fast_with_local_guidance(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; be explicit
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        validate(compose_config(["data=lm", "data.model=gpt2"]))
    assert time.perf_counter() - started <= 5
    message = str(info.value)
    assert "data.model='gpt2'" in message and "HF_HUB_OFFLINE=1" in message
    assert "data.model_path=" in message and "data.text_files=" in message
    # A value that cannot work is reported before the network is even asked.
    with pytest.raises(ConfigError, match="scenario=known_codes does not apply to data=lm"):
        validate(compose_config(["data=lm", "scenario=known_codes"]))


def test_streamed_dataset_offline_fails_with_local_guidance(local):
    with pytest.raises(ConfigError) as info:
        validate(compose_config([*local[:2], "data.dataset=Skylion007/openwebtext"]))
    message = str(info.value)
    assert "data.dataset='Skylion007/openwebtext' cannot be streamed" in message
    assert "data.text_files=" in message
