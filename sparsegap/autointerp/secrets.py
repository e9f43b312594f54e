"""Keeping the LLM API key off disk, whichever way it is given.

Give it in the environment variable named by ``llm.api_key_env`` (``OPENAI_API_KEY``). Given as
``llm.api_key=...`` (on the command line or in a YAML), it would otherwise reach every record of
the run: ``.hydra/``, a sweep's ``multirun.yaml``, ``autointerp.json``, the W&B run's config and
metadata (which holds the command line) and W&B's ``debug.log``.

``HideApiKey``, a Hydra callback named in ``conf/autointerp/config.yaml``, runs once the config
is composed and before Hydra writes anything: it moves the key into that environment variable of
this process (the client reads it there; jobs a launcher starts inherit it), sets ``llm.api_key``
to null in the config and in the overrides a sweep recomposes its jobs from, and masks the key in
``sys.argv`` and in every string Hydra derived from the overrides. ``redacted`` masks the key in
any config the pipeline records, for callers that compose without the entry point.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

MASK = "<redacted>"
_KEY_OVERRIDE = re.compile(r"^\+{0,2}llm\.api_key=")


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
