"""One rule for every value: each numeric field of each schema states its range, NaN and ±inf are
rejected unless a field says they mean something, no key outside a schema is accepted, and what
Hydra itself rejects (wrong types, unknown keys or group options) is the same one ``error:`` line
with exit code 2, before Hydra creates a run folder."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
import warnings

import pytest
from helpers import compose_config, run_cli

from sparsegap import config
from sparsegap.config import ConfigError, range_of
from sparsegap.encoders import ENCODERS
from sparsegap.validate import check_schema, validate

ITO = ["encoder=sae_ito"]
LM = ["data=lm"]

# (overrides, the start of the one-line message, what it says is allowed)
BAD = [
    # data: NaN and ±inf in every float field, integers out of range or beyond 64 bits
    (["data.snr_db=nan"], "data.snr_db=nan", "must be a finite number"),
    (["data.snr_db=-inf"], "data.snr_db=-inf", "must be a finite number"),
    (["data.snr_db=inf"], "data.snr_db=inf", "must be a finite number"),
    (["data.noise_std=inf"], "data.noise_std=inf", ">= 0 (a finite number)"),
    (["data.noise_std=nan"], "data.noise_std=nan", ">= 0 (a finite number)"),
    (["data.magnitude_mean=nan"], "data.magnitude_mean=nan", "must be a finite number"),
    (["data.magnitude_mean=-inf"], "data.magnitude_mean=-inf", "must be a finite number"),
    (["data.magnitude_std=inf"], "data.magnitude_std=inf", ">= 0 (a finite number)"),
    (["data.magnitude_heterogeneity=nan"], "data.magnitude_heterogeneity=nan", ">= 0"),
    (["data.zipf_exponent=inf"], "data.zipf_exponent=inf", ">= 0"),
    (["data.importance_decay=nan"], "data.importance_decay=nan", "must be in (0, 1]"),
    (["data.importance_decay=0"], "data.importance_decay=0.0", "must be in (0, 1]"),
    (["data.correlation_scale=1"], "data.correlation_scale=1.0", "must be in [0, 1)"),
    (["data.correlation_scale=-inf"], "data.correlation_scale=-inf", "must be in [0, 1)"),
    (["data.coherence_target=nan"], "data.coherence_target=nan", "must be in (0, 1)"),
    (["data.seed=-1"], "data.seed=-1", "must be between 0 and 2147483647"),
    (["data.seed=18446744073709551616"], "data.seed=18446744073709551616", "and 2147483647"),
    (["data.N=9223372036854775808"], "data.N=9223372036854775808", "(a 64-bit integer)"),
    (["data.K=0"], "data.K=0", "must be between 1 and data.N=16"),
    (["data.K=17"], "data.K=17", "must be between 1 and data.N=16"),
    (["data.M=0"], "data.M=0", "must be at least 1"),
    (["data.train_samples=1"], "data.train_samples=1", "must be at least 2"),
    (["data.stream_batch=-1"], "data.stream_batch=-1", ">= 0"),
    (["data.hierarchy_branching=0"], "data.hierarchy_branching=0", "must be at least 1"),
    (["data.correlation_rank=17"], "data.correlation_rank=17", "between 0 and data.N=16"),
    # top level
    (["seed=-1"], "seed=-1", "must be between 0 and 2147483647"),
    (["seed=4294967296"], "seed=4294967296", "must be between 0 and 2147483647"),
    (["lr=inf"], "lr=inf", "must be positive (a finite number)"),
    (["lr=nan"], "lr=nan", "must be positive (a finite number)"),
    (["lr=0"], "lr=0.0", "must be positive"),
    (["l1_coeff=-inf"], "l1_coeff=-inf", ">= 0 (a finite number)"),
    (["l1_coeff=nan"], "l1_coeff=nan", ">= 0 (a finite number)"),
    (["replicas=0"], "replicas=0", "must be at least 1"),
    (["steps=-1"], "steps=-1", ">= 0"),
    (["eval_every=0"], "eval_every=0", "must be at least 1"),
    (["lr_warmup_steps=-5"], "lr_warmup_steps=-5", ">= 0"),
    (["metrics.dead_window=0"], "metrics.dead_window=0", "must be at least 1"),
    (["device.threads=0"], "device.threads=0", "must be at least 1"),
    (["scenario.steps=-1", "steps=10"], "scenario.steps=-1", ">= 0"),
    # encoders
    (["encoder.latents=0"], "encoder.latents=0", "must be at least 1"),
    (["encoder=mlp", "encoder.hidden=0"], "encoder.hidden=0", "must be at least 1"),
    (["encoder=lista", "encoder.layers=-1"], "encoder.layers=-1", ">= 0"),
    (["encoder=topk", "encoder.aux_coeff=nan"], "encoder.aux_coeff=nan", ">= 0"),
    (["encoder=topk", "encoder.aux_dead_tokens=0"], "encoder.aux_dead_tokens=0", "at least 1"),
    (["encoder=topk", "encoder.k=0"], "encoder.k=0", "must be at least 1"),
    (
        ["encoder=batch_topk", "encoder.threshold_momentum=inf"],
        "encoder.threshold_momentum=inf",
        "must be in (0, 1]",
    ),
    (["encoder=jumprelu", "encoder.bandwidth=inf"], "encoder.bandwidth=inf", "must be positive"),
    (["encoder=jumprelu", "encoder.l0_coeff=nan"], "encoder.l0_coeff=nan", ">= 0"),
    (
        ["encoder=jumprelu", "encoder.init_threshold=-inf"],
        "encoder.init_threshold=-inf",
        "must be positive",
    ),
    (["encoder=sparse_coding", "encoder.init_log=nan"], "encoder.init_log=nan", "finite number"),
    (["encoder=dictionary_learning", "encoder.ridge=inf"], "encoder.ridge=inf", ">= 0"),
    (
        ["encoder=dictionary_learning", "encoder.duplicate_cosine=nan"],
        "encoder.duplicate_cosine=nan",
        "must be in (0, 1]",
    ),
    (["encoder=sklearn_dl", "encoder.alpha=inf"], "encoder.alpha=inf", "must be positive"),
    (
        ["encoder=sklearn_dl", "encoder.transform_alpha=0"],
        "encoder.transform_alpha=0.0",
        "must be positive",
    ),
    # inference (encoder.inference of sparse coding, SAE + ITO, dictionary learning)
    ([*ITO, "encoder.inference.lr=inf"], "encoder.inference.lr=inf", "must be positive"),
    ([*ITO, "encoder.inference.lr=nan"], "encoder.inference.lr=nan", "must be positive"),
    ([*ITO, "encoder.inference.l1_coeff=-inf"], "encoder.inference.l1_coeff=-inf", ">= 0"),
    ([*ITO, "encoder.inference.init_log=nan"], "encoder.inference.init_log=nan", "finite"),
    ([*ITO, "encoder.inference.tolerance=inf"], "encoder.inference.tolerance=inf", ">= 0"),
    ([*ITO, "encoder.inference.iterations=-1"], "encoder.inference.iterations=-1", ">= 0"),
    ([*ITO, "encoder.inference.k=0"], "encoder.inference.k=0", "must be at least 1"),
    # language-model data and the activation cache
    ([*LM, "data.input_scale=nan"], "data.input_scale=nan", "must be positive"),
    ([*LM, "data.input_scale=inf"], "data.input_scale=inf", "must be positive"),
    ([*LM, "data.context=1"], "data.context=1", "must be at least 2"),
    ([*LM, "data.seed=-1"], "data.seed=-1", "must be between 0 and 2147483647"),
    ([*LM, "data.batch_tokens=0"], "data.batch_tokens=0", "must be at least 1"),
    ([*LM, "checkpoint_every=0"], "checkpoint_every=0", "must be at least 1"),
    ([*LM, "+cache=build", "cache.flush_tokens=0"], "cache.flush_tokens=0", "at least 1"),
    # keys outside the schema, added with +
    (["+data.foo=1"], "data.foo=1", "data has no key 'foo'; its keys are K, M, N,"),
    (["+foo=1"], "foo=1", "the config has no key 'foo'; its keys are cache,"),
    (["+encoder.foo=1"], "encoder.foo=1", "encoder has no key 'foo'"),
    ([*ITO, "+encoder.inference.foo=1"], "encoder.inference.foo=1", "its keys are candidates,"),
    (["+metrics.foo=1"], "metrics.foo=1", "metrics has no key 'foo'"),
    (["+scenario.foo=1"], "scenario.foo=1", "scenario has no key 'foo'"),
    (["+device.foo=1"], "device.foo=1", "device has no key 'foo'"),
    (["+logger.foo=1"], "logger.foo=1", "logger has no key 'foo'"),
    ([*LM, "+data.N=16"], "data.N=16", "data has no key 'N'"),
    ([*LM, "+cache=build", "+cache.foo=1"], "cache.foo=1", "cache has no key 'foo'"),
]


@pytest.mark.parametrize(("overrides", "start", "allowed"), BAD, ids=lambda v: str(v))
def test_a_bad_value_is_one_line_naming_key_value_and_range(overrides, start, allowed):
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides), reach_sources=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{start} is invalid: "), message
    assert allowed in message, message


def test_there_are_at_least_40_bad_value_cases_with_nonfinite_floats_in_every_family():
    assert len(BAD) >= 40
    nonfinite = [start for _, start, _ in BAD if start.endswith(("=nan", "=inf", "=-inf"))]
    for family in ("data.", "encoder.inference.", "encoder.", "lr", "l1_coeff"):
        assert any(start.startswith(family) for start in nonfinite), family
    assert any("data=lm" in overrides and start.endswith("=nan") for overrides, start, _ in BAD)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=unknown"],  # a group: its keys merge into known ones
        [*LM, "+cache=build"],
        [*ITO, "data.snr_db=20", "data.magnitude_mean=2.5", "seed=2147483647"],
        ["logger.tags=[a,b]"],
    ],
    ids=str,
)
def test_keys_added_legitimately_and_values_in_range_pass(overrides):
    check_schema(compose_config(overrides))


def _schemas() -> list[type]:
    """Every dataclass schema a composed config can hold, nested ones included."""
    found: list[type] = []
    todo = [config.Config, config.DataConfig, config.LMDataConfig, config.CacheConfig]
    todo += [config.ScenarioConfig, config.DeviceConfig, config.LoggerConfig]
    todo += [cls.config for cls in ENCODERS.values()]
    while todo:
        schema = todo.pop()
        if schema in found:
            continue
        found.append(schema)
        hints = typing.get_type_hints(schema)
        todo += [t for t in hints.values() if dataclasses.is_dataclass(t)]
    return found


def _numeric(hint: object) -> bool:
    """Whether a field's type is int or float (optional or not; bool is not)."""
    return bool((set(typing.get_args(hint)) or {hint}) & {int, float})


def test_every_numeric_field_of_every_schema_states_its_range():
    undeclared = []
    for schema in _schemas():
        hints = typing.get_type_hints(schema)
        for spec in dataclasses.fields(schema):
            if _numeric(hints[spec.name]) and "range" not in spec.metadata:
                undeclared.append(f"{schema.__name__}.{spec.name}")
    assert not undeclared, f"numeric fields without ranged(...): {undeclared}"
    assert config.InferenceConfig in _schemas()


def test_a_range_admits_its_bounds_and_rejects_nonfinite_values_unless_declared():
    unit = config.Range(gt=0, le=1)
    assert unit.problem(1.0) is None and unit.problem(0.5) is None
    assert unit.problem(0.0) == "must be in (0, 1]"
    assert unit.problem(float("nan")) == "must be in (0, 1] (a finite number)"
    assert config.Range(nonfinite=True).problem(float("-inf")) is None
    assert config.Range().problem(2**63) is not None and config.Range().problem(2**63 - 1) is None
    assert config.Range(ge=1, le="N").problem(5, {"N": 4}, "data.") == (
        "must be between 1 and data.N=4"
    )
    spec = {f.name: f for f in dataclasses.fields(config.DataConfig)}["K"]
    assert range_of(spec).le == "N"


# The real entry point: one stderr line, exit code 2, and nothing written (no run folder, no
# W&B run), for bad values, wrong types, unknown keys and group options, single runs and sweeps
# that cannot start (a swept value that does not compose fails only its own job:
# tests/test_reliability.py::test_a_swept_value_that_does_not_compose_fails_alone).
CLI = [
    (["data.snr_db=nan"], "error: data.snr_db=nan is invalid: must be a finite number"),
    (["+data.foo=1"], "error: data.foo=1 is invalid: data has no key 'foo'; its keys are K, M,"),
    (["data.seed=18446744073709551616"], "error: data.seed=18446744073709551616 is invalid"),
    (["lr=inf"], "error: lr=inf is invalid: must be positive (a finite number)"),
    (["data.N=abc"], "error: data.N='abc' is invalid: must be an integer"),
    (["lr=fast"], "error: lr='fast' is invalid: must be a number"),
    (["compile=maybe"], "error: compile='maybe' is invalid: must be true or false"),
    (["data.foo=1"], "error: data.foo=1 is invalid: data has no key 'foo'; its keys are K, M,"),
    (["encoder=nonexistent"], "error: encoder='nonexistent' is invalid: allowed values are"),
    (["encoder=sae_schema"], "error: encoder='sae_schema' is invalid: allowed values are"),
    (["+experiment=nope"], "error: experiment='nope' is invalid: allowed values are"),
    (["data.N=[1"], "error: data.N=[1 is not a valid override: "),
    (["-m", "data.N=16,32", "lr=fast"], "error: lr='fast' is invalid: must be a number"),
    (["-m", "encoder=sae,topk", "encoder.k=5"], "error: encoder.k=5 is invalid: encoder has no"),
]


@pytest.mark.parametrize(("args", "line"), CLI, ids=lambda v: str(v))
def test_the_cli_gives_one_error_line_exit_2_and_writes_nothing(tmp_path, args, line):
    result = run_cli([*args, "logger=wandb", "logger.mode=offline"], cwd=tmp_path, timeout=120)
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert "sae_schema" not in lines[0].partition("allowed values are")[2]
    assert not list(tmp_path.iterdir()), "an invalid config left files behind"


# python -m sparsegap.autointerp: the same early check (sparsegap.precheck), on its own config.
AUTOINTERP_CLI = [
    (["features=abc"], "error: features='abc' is invalid: must be an integer"),
    (["llm.foo=1"], "error: llm.foo=1 is invalid: llm has no key 'foo'; its keys are api_key,"),
    (["explainer=nonexistent"], "error: explainer='nonexistent' is invalid: allowed values are"),
    (["explainer=llm_schema"], "error: explainer='llm_schema' is invalid: allowed values are"),
    (
        ["scorer=rule_schema"],
        "error: scorer='rule_schema' is invalid: allowed values are llm, rule",
    ),
    (["logger=logger_schema"], "error: logger='logger_schema' is invalid: allowed values are"),
    (["examples.mark_fraction=nan"], "error: examples.mark_fraction=nan is invalid: must be"),
    (["-m", "features=1,abc"], "error: features='abc' is invalid: must be an integer"),
]


@pytest.mark.parametrize(("args", "line"), AUTOINTERP_CLI, ids=lambda v: str(v))
def test_the_autointerp_cli_gives_one_error_line_exit_2_and_writes_nothing(tmp_path, args, line):
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.autointerp", "run=nowhere", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert "_schema" not in lines[0].partition("allowed values are")[2]
    assert not list(tmp_path.iterdir()), "an invalid config left files behind"


def test_autointerp_options_are_the_schemas_and_shadow_no_stored_node():
    """Its groups' options are the schemas stored under the names users select (issue 18's rule
    for the main CLI), so none is a YAML that Hydra validates against a ConfigStore node of the
    same name (a deprecation warning) once both CLIs' configs are registered in one process."""
    from autointerp_helpers import compose_cfg

    from sparsegap.registry import register_configs

    register_configs()  # stores device/auto, logger/wandb, ... for python -m sparsegap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = compose_cfg(["explainer=ngram", "scorer=rule", "device=auto"])
    assert cfg.explainer.max_terms == 5 and cfg.device.name == "auto"
    assert cfg.logger.name == "none" and cfg.scorer.name == "rule"


# python -m sparsegap.autointerp: the same rule on its own schemas.
AUTOINTERP_BAD = [
    (["examples.mark_fraction=nan"], "examples.mark_fraction=nan", "between 0 and 1 (a finite"),
    (["llm.timeout_s=inf"], "llm.timeout_s=inf", "must be positive (a finite number)"),
    (["llm.temperature=-inf"], "llm.temperature=-inf", ">= 0 (a finite number)"),
    (["explainer=ngram", "explainer.min_log_odds=nan"], "explainer.min_log_odds=nan", "finite"),
    (["explainer=ngram", "explainer.coverage=0"], "explainer.coverage=0.0", "in (0, 1]"),
    (["seed=-1"], "seed=-1", "must be between 0 and 2147483647"),
    (["features=0"], "features=0", "must be at least 1"),
    (["+llm.foo=1"], "llm.foo=1", "llm has no key 'foo'; its keys are api_key,"),
]


@pytest.mark.parametrize(("overrides", "start", "allowed"), AUTOINTERP_BAD, ids=str)
def test_autointerp_bad_values_are_one_line_too(overrides, start, allowed):
    from autointerp_helpers import compose_cfg

    from sparsegap.autointerp import config as autointerp

    autointerp.validate(compose_cfg([]))  # the base is valid
    with pytest.raises(ConfigError) as info:
        autointerp.validate(compose_cfg(overrides))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{start} is invalid: "), message
    assert allowed in message, message


def test_every_numeric_field_of_the_autointerp_schemas_states_its_range():
    from sparsegap.autointerp import config as autointerp

    schemas = [
        value
        for value in vars(autointerp).values()
        if dataclasses.is_dataclass(value) and value.__module__ == autointerp.__name__
    ]
    assert len(schemas) >= 5
    undeclared = [
        f"{schema.__name__}.{spec.name}"
        for schema in schemas
        for spec in dataclasses.fields(schema)
        if _numeric(typing.get_type_hints(schema)[spec.name]) and "range" not in spec.metadata
    ]
    assert not undeclared, undeclared
