"""Shared test helpers: compose real Hydra configs from conf/ without a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sparsegap.registry import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small and quick, but the same code path as the paper's settings.
FAST = ["steps=40", "eval_every=20", "replicas=2", "logger=none", "device=cpu"]


def compose_config(overrides: list[str], fast: bool = True) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*(FAST if fast else []), *overrides])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run_cli(
    args: list[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m sparsegap ARGS`` in ``cwd`` (outputs land under it), ``env`` added to the
    environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sparsegap", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
