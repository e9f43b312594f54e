"""``python -m sparsegap.autointerp run=<LM run folder> [overrides]``.

compose (Hydra) → validate → load the run → explain and score → outputs; exit code 0 on success,
2 on an invalid configuration, 1 when the run fails (``autointerp.json`` then says why). An
``llm.api_key=...`` on the command line goes into its environment variable before Hydra reads
the command line (``secrets.py``); the config is then composed and checked before Hydra runs, as
in ``python -m sparsegap`` (``sparsegap.precheck``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sparsegap.autointerp.config import register_configs, validate
from sparsegap.autointerp.secrets import move_key_to_environment
from sparsegap.extras import require
from sparsegap.precheck import check_command_line
from sparsegap.runtime import run_entry_point

CONF = "sparsegap.conf.autointerp"

register_configs()


def run(cfg: DictConfig, out_dir: Path) -> float:
    """Validate, then explain and score; returns the mean F1 of the scored features."""
    require("autointerp", "sparsegap.autointerp")
    from sparsegap.autointerp import source
    from sparsegap.autointerp.pipeline import execute

    validate(cfg)
    for name in ("httpx", "httpx2"):  # one INFO line per LLM request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    summary = execute(cfg, out_dir, lambda: source.load(cfg))
    print(
        f"{summary['label']}: {summary['scored']} of {summary['features']} features scored,"
        f" F1 {summary['f1_mean']:.3f} (median {summary['f1_median']:.3f}), balanced accuracy"
        f" {summary['balanced_accuracy_mean']:.3f} · {summary['wall_time_s']:.1f} s · {out_dir}"
    )
    return float(summary["f1_mean"])


@hydra.main(version_base="1.3", config_path=f"pkg://{CONF}", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and cfg.logger.name == "wandb" and cfg.logger.group is None:
        cfg.logger.group = Path(hydra_cfg.sweep.dir).name  # the jobs of a sweep share a group
    return run_entry_point(lambda: run(cfg, Path(hydra_cfg.runtime.output_dir)), multirun)


def main() -> None:
    """The console script and ``python -m sparsegap.autointerp``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    sys.argv[1:] = move_key_to_environment(sys.argv[1:])
    check_command_line(sys.argv[1:], validate, CONF)
    _hydra_main()


if __name__ == "__main__":
    main()
