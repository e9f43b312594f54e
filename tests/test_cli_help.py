"""``sparsegap --help``: every group, option and field, from the schemas, and the README's copy."""

from __future__ import annotations

import dataclasses

from helpers import ROOT

from sparsegap import config
from sparsegap.cli_help import field_comments, render
from sparsegap.encoders import ENCODERS
from sparsegap.inference import INFERENCE


def test_every_schema_field_is_documented_by_its_comment():
    for cls in (config.Config, config.DataConfig, config.LMDataConfig, config.InferenceConfig,
                config.DeviceConfig, config.LoggerConfig, config.MetricsConfig,
                config.CacheConfig, *(e.config for e in ENCODERS.values())):  # fmt: skip
        comments = field_comments(cls)
        groups = {"data", "encoder", "scenario", "device", "logger", "name", "metrics", "cache"}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in groups | set(comments)]
        assert not missing, f"{cls.__name__}: fields without a comment: {missing}"


def test_help_lists_every_encoder_algorithm_and_key():
    text = render()
    for name, cls in ENCODERS.items():
        assert f"  {name} " in text and cls.label in text
    flat = " ".join(text.split())  # a name and its label may sit on two wrapped lines
    for name in INFERENCE:
        assert f"{name} (" in flat
    assert "data.K = 3" in text and "encoder.inference.iterations = 10000" in text
    assert "_schema" not in text


def test_the_readme_shows_the_current_help():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ sparsegap --help\n", 1)[1].split("\n```", 1)[0]
    assert block == render().rstrip(), "README's --help is stale: see tests/test_cli_help.py"
