"""The checks an entry point runs before Hydra does anything: an invalid single run, or a sweep
that cannot start, is one ``error:`` line naming the key, the value and what is allowed (exit
code 2), and Hydra never creates a folder for it; and the optional extras a configuration needs.
``python -m sparsegap`` and ``python -m sparsegap.autointerp`` share them (``check_command_line``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from omegaconf import DictConfig

from sparsegap.config import ConfigError, is_lm
from sparsegap.encoders import ENCODERS
from sparsegap.extras import require

MAIN_CONF = "sparsegap.conf"  # the config module of python -m sparsegap (its root: config.yaml)


def require_extras(cfg: DictConfig) -> None:
    """One error line, before anything runs, when the configuration needs an extra that is not
    installed (sparsegap.extras)."""
    if is_lm(cfg):
        require("lm", "data=lm")
    encoder = ENCODERS.get(cfg.encoder.name)
    if encoder is not None and encoder.extra is not None:
        require(encoder.extra, f"encoder={cfg.encoder.name}")


def check_command_line(
    args: list[str], check: Callable[[DictConfig], None], config_module: str = MAIN_CONF
) -> None:
    """What an entry point's ``main()`` runs before Hydra, on its command line ``args``: print
    one ``error:`` line and exit with code 2 when a single run's config (``config_module``'s
    ``config.yaml`` with the overrides) does not compose or fails ``check``, or when a multirun
    cannot start (``sweep_problems``). Hydra's other flags (``--cfg``, ``--info``, ``-cn``, ...)
    change what is composed or printed, and are left to Hydra."""
    multirun = any(arg in ("-m", "--multirun", "hydra.mode=MULTIRUN") for arg in args)
    overrides = [arg for arg in args if arg not in ("-m", "--multirun")]
    if any(arg.startswith("-") for arg in overrides):
        return
    try:
        if multirun:
            problems = sweep_problems(overrides, config_module)
        else:
            check(compose_checked(overrides, config_module))
            problems = []
    except ConfigError as error:
        problems = [str(error)]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(2)


def compose_checked(overrides: list[str], config_module: str = MAIN_CONF) -> DictConfig:
    """``config_module``'s config composed with ``overrides`` as Hydra will compose it, raising
    ``ConfigError`` with one line for what Hydra rejects: a value of the wrong type, a key or
    group option that does not exist, an override that does not parse."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module, version_base="1.3"):
            return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise composition_error(error, overrides) from error


def check_run(cfg: DictConfig) -> None:
    """``python -m sparsegap``'s check of a single run's composed config: its extras, and
    ``validate`` (all but reaching ``data=lm``'s sources, which the run checks)."""
    from sparsegap.validate import validate

    require_extras(cfg)
    validate(cfg, reach_sources=False)


def sweep_problems(overrides: list[str], config_module: str = MAIN_CONF) -> list[str]:
    """Why a multirun could not start, one line per distinct reason: the overrides its jobs
    share do not compose (Hydra composes them before its sweeper starts, and stops there).

    Under Hydra's basic sweeper (``python -m sparsegap.autointerp``), also a swept value that
    does not compose, since that sweeper composes every job of a batch before launching any and
    stops the whole multirun at the first that does not. The sweep is read as the sweeper reads
    it (an experiment preset's ``hydra.sweeper.params``, then the command line); each value is
    composed once, with the first value of every other swept key, so the check costs the sum of
    the sweeps' lengths, not their product (a value that fails only beside another sweep's later
    value is left to Hydra's own check). Any other sweeper is left to check its jobs itself:
    ``python -m sparsegap``'s (``hydra/sweeper=sparsegap``) records such a job as failed and runs
    the others."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    problems: dict[str, None] = {}  # ordered and without repeats
    try:
        fixed = [
            o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()
        ]
        with initialize_config_module(config_module, version_base="1.3"):
            sweeper = compose("config", overrides=fixed, return_hydra_config=True).hydra.sweeper
            if sweeper._target_ != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
                return []
            params = [f"{key}={value}" for key, value in (sweeper.params or {}).items()]
            # key -> its values as "key=value" (a later override of a key replaces an earlier)
            swept = {
                o.get_key_element(): [job[0] for job in BasicSweeper.split_arguments([o], None)[0]]
                for o in parser.parse_overrides(params + overrides)
            }
            first = {key: values[0] for key, values in swept.items()}
            jobs = [list(first.values())] + [
                list({**first, key: value}.values())
                for key, values in swept.items()
                for value in values[1:]
            ]
            for job in jobs:
                try:
                    compose("config", overrides=job)
                except (HydraException, OmegaConfBaseException) as error:
                    problems[str(composition_error(error, job))] = None
    except (HydraException, OmegaConfBaseException) as error:
        return [str(composition_error(error, overrides))]
    return list(problems)


def composition_error(error: Exception, overrides: list[str]) -> ConfigError:
    """Hydra's (or OmegaConf's) composition error as one line naming the key, the value given
    and what is allowed."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from sparsegap.validate import unknown_key

    cause = error.__cause__ or error
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        allowed = ", ".join(error.options)
        return ConfigError(f"{group}={option!r} is invalid: allowed values are {allowed}")
    key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and schema:
        allowed = sorted(f.name for f in dataclasses.fields(schema))
        return unknown_key(key, given(key, overrides), allowed)
    if key and isinstance(cause, ValidationError):
        wanted = _TYPE_WORDS.get(_field_type(schema, key.rpartition(".")[2]), "another type")
        return ConfigError(f"{key}={given(key, overrides)!r} is invalid: must be {wanted}")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(lines) or type(error).__name__
    if isinstance(error, OverrideParseException):
        return ConfigError(f"{error.override} is not a valid override: {reason}")
    return ConfigError(reason)


# How an error names the values a field's type admits.
_TYPE_WORDS = {
    "int": "an integer",
    "int | None": "an integer or null",
    "float": "a number",
    "float | None": "a number or null",
    "bool": "true or false",
    "str": "a string",
    "str | None": "a string or null",
}


def _field_type(schema: object, name: str) -> str | None:
    """A dataclass field's declared type as written (``"int | None"``), or None."""
    if not dataclasses.is_dataclass(schema):
        return None
    spec = {f.name: f for f in dataclasses.fields(schema)}.get(name)
    return None if spec is None else str(spec.type)


def given(key: str, overrides: list[str]) -> str:
    """The value ``overrides`` give ``key`` (the last one wins, as in Hydra)."""
    values = [
        arg.partition("=")[2] for arg in overrides if arg.partition("=")[0].lstrip("+~") == key
    ]
    return values[-1] if values else "?"
