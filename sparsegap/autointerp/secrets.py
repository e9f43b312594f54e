"""Keeping the LLM API key off disk and off the screen, whichever way it is given.

Give it in the environment variable named by ``llm.api_key_env`` (``OPENAI_API_KEY``). Given as
``llm.api_key=...`` (on the command line or in a YAML), it would otherwise reach every record of
the run: ``.hydra/``, a sweep's ``multirun.yaml``, ``autointerp.json``, the W&B run's config and
metadata (which holds the command line) and W&B's ``debug.log``; and what ``--cfg`` prints.

``move_key_to_environment`` runs in the entry point before Hydra reads the command line: it
takes an ``llm.api_key=...`` argument out of it into that environment variable of this process
(the client reads it there; jobs a launcher starts inherit it), so that Hydra never sees the key:
not in what ``--cfg job|hydra|all`` or ``--info`` prints, not in any override it records.
``HideApiKey``, a Hydra callback named in ``conf/autointerp/config.yaml``, covers what is left
once the config is composed and before Hydra writes anything (a key in a YAML, or a command line
that did not pass through the entry point): it moves the key into the environment variable the
same way, sets ``llm.api_key`` to null in the config and in the overrides a sweep recomposes its
jobs from, and masks the key in ``sys.argv`` and in every string Hydra derived from the
overrides. ``redacted`` masks the key in any config the pipeline records, for callers that
compose without the entry point.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

MASK = "<redacted>"
_KEY_OVERRIDE = re.compile(r"^\+{0,2}llm\.api_key=")


def move_key_to_environment(args: list[str]) -> list[str]:
    """``args`` (a command line) without its ``llm.api_key=...`` overrides, whose key is put into
    the environment variable the command line's ``llm.api_key_env=...`` names (else the
    schema's default). ``llm.api_key=null`` stays: it hides nothing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from sparsegap.autointerp.config import LLMConfig

    kept: list[str] = []
    key: str | None = None
    variable = LLMConfig.api_key_env
    for arg in args:
        if _KEY_OVERRIDE.match(arg):
            value: Any = arg.partition("=")[2]  # a malformed value is still a key: it goes
            with contextlib.suppress(HydraException):  # unquoted as Hydra would ('sk-...')
                value = OverridesParser.create().parse_overrides([arg])[0].value()
            if value is not None:
                key = str(value)  # the last one wins, as in Hydra
                continue
        elif arg.startswith("llm.api_key_env="):
            variable = arg.partition("=")[2]
        kept.append(arg)
    if key is not None:
        os.environ[variable] = key
    return kept


def hide_api_key(cfg: DictConfig) -> None:
    """Move ``cfg.llm.api_key`` (when set) to its environment variable and out of ``cfg``."""
    key = OmegaConf.select(cfg, "llm.api_key")
    if not key:
        return
    secret = str(key)
    os.environ[str(cfg.llm.api_key_env)] = secret
    with read_write(cfg), open_dict(cfg):
        cfg.llm.api_key = None
        task = OmegaConf.select(cfg, "hydra.overrides.task")
        if task is not None:
            kept = [o for o in task if not _KEY_OVERRIDE.match(str(o))]
            cfg.hydra.overrides.task = [*kept, "llm.api_key=null"]  # a YAML key stays hidden too
        if "hydra" in cfg:
            _mask(cfg.hydra, secret)
    sys.argv[:] = [arg.replace(secret, MASK) for arg in sys.argv]


def _mask(node: DictConfig | ListConfig, secret: str) -> None:
    """Replace ``secret`` in every plain string under ``node`` (interpolations are left alone:
    they resolve to the masked values)."""
    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if OmegaConf.is_interpolation(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            _mask(child, secret)
        elif isinstance(value := child._value(), str) and secret in value:  # type: ignore[union-attr]
            node[key] = value.replace(secret, MASK)


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config container with ``llm.api_key`` masked."""
    llm = config.get("llm")
    if not isinstance(llm, dict) or not llm.get("api_key"):
        return config
    config = copy.deepcopy(config)
    config["llm"]["api_key"] = MASK
    return config


class HideApiKey(Callback):
    """``hide_api_key`` before Hydra writes a run's or a sweep's files."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        hide_api_key(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hide_api_key(config)
