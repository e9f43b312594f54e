"""Entry point: ``python -m sparsegap [overrides]`` (or the ``sparsegap`` console script).

compose (Hydra) → validate → build → train → summary; exit code 0 on success, 2 on an invalid
configuration (before anything runs), 1 when the run fails (its metrics so far stay on disk).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sparsegap.config import ConfigError, fill_defaults, register_configs, to_container, validate
from sparsegap.runtime import keep_freed_memory
from sparsegap.tracking import Tracker

register_configs()


def _terminate(signum: int, frame: Any) -> None:
    # Turn SIGTERM (scheduler pre-emption, `kill`) into an exception so the tracker marks the
    # run failed and closes its files instead of the process vanishing mid-run.
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def run(cfg: DictConfig, run_dir: Path, group: str | None = None, name: str | None = None) -> float:
    """Validate, train and track one configuration; returns the final mean test latent MCC."""
    from sparsegap.train import build, train  # heavy imports after validation

    validate(cfg)
    fill_defaults(cfg)
    keep_freed_memory()
    if cfg.device.threads is not None:
        torch.set_num_threads(cfg.device.threads)
    logger = to_container(cfg.logger) if cfg.logger.name == "wandb" else None
    with Tracker(run_dir, to_container(cfg), logger, group=group, name=name) as tracker:
        model = build(cfg)
        record = train(model, tracker)
        model.save(run_dir / "model.pt")
    print_summary(tracker, run_dir)
    mcc = record["latent_mcc/test"]
    return float(sum(mcc) / len(mcc)) if isinstance(mcc, list) else float(mcc)


def print_summary(tracker: Tracker, run_dir: Path) -> None:
    final = tracker.last or {}
    rows = [(k, v) for k, v in final.items() if isinstance(v, dict) and not k.startswith("dead")]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"{'metric':<{width}}  {'mean':>10}  {'std':>9}"]
    lines += [f"{k:<{width}}  {v['mean']:>10.4g}  {v['std']:>9.3g}" for k, v in rows]
    for key in ("flops/train_cumulative", "flops/inference_test", "flops/total"):
        if key in final:
            lines.append(f"{key:<{width}}  {final[key]:>10.3g}")
    best = tracker.best.get("latent_mcc/test")
    if best is not None:
        lines.append(f"{'best latent_mcc/test':<{width}}  {best:>10.4g}")
    lines.append(f"step {final.get('step')} · {final.get('wall_time_s', 0):.1f} s · {run_dir}")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    overrides = ",".join(hydra_cfg.overrides.task) or "defaults"
    name = f"{cfg.scenario.name}-{cfg.encoder.name}-{overrides}"[:120]
    # Outside the main thread (some launchers) signals cannot be handled: keep the default.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(cfg, Path(hydra_cfg.runtime.output_dir), group=group, name=name)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_SILENT", "true")
    main()
