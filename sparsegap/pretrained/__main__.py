"""``python -m sparsegap.pretrained sae.path=… [data.tokens=…] [gap.methods=[refit,fista,omp,ito]]``

Measures the amortisation gap of a trained SAE (SAELens, sparsify or sparsegap) on held-out
tokens of its own model and hook; writes report.md, results.json and pareto.png to the Hydra run
folder. Exit code 2 with one ``error:`` line for an invalid SAE folder or configuration (before
any harvesting).
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sparsegap.pretrained.config import PretrainedConfig
from sparsegap.runtime import run_entry_point

ConfigStore.instance().store(name="pretrained", node=PretrainedConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="pretrained")
def main(cfg: DictConfig) -> float:
    from sparsegap.pretrained.run import measure

    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def task() -> float:
        results = measure(cfg, run_dir)
        matched = results["gap"].get("fista") or next(iter(results["gap"].values()), {})
        return float(matched.get("normalised_mse", float("nan")))

    return run_entry_point(task, multirun=False)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_SILENT", "true")
    main()
