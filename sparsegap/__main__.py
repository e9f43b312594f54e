"""Entry point: ``python -m sparsegap [overrides]`` (or the ``sparsegap`` console script).

compose (Hydra) → validate → build → train (``+cache=build``: harvest) → summary; exit code 0 on
success, 2 on an invalid configuration (before anything runs) or a run folder another live run
holds, 1 when the run fails (its metrics so far stay on disk). A multirun (``-m``) runs every job
it can: a job with an invalid value, or one that does not compose (``hydra/sweeper=sparsegap``,
hydra_plugins/sparsegap_sweeper), fails alone with its reason in its folder; the exit code is then
1, and 2 only when the sweep cannot start (the overrides all its jobs share do not compose).

The run folder tells one story: Hydra does not write ``.hydra/`` itself (``hydra.output_subdir:
null``); the run writes it once it holds the folder's lock and its config is valid, after removing
the outputs of an earlier run it does not continue. A rerun with an invalid value therefore
leaves a used folder untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sparsegap.config import ConfigError, is_lm, to_container
from sparsegap.precheck import check_command_line, check_run, require_extras
from sparsegap.registry import register_configs
from sparsegap.runtime import keep_freed_memory, run_entry_point
from sparsegap.tracking import Tracker, hold, holds_outputs, write_text_atomic

register_configs()


@dataclass(frozen=True)
class Identity:
    """How a run shows in W&B: its group (a multirun's sweep folder), name and extra tags."""

    group: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()


def run(
    cfg: DictConfig,
    run_dir: Path,
    identity: Identity | None = None,
    hydra_files: Mapping[str, str] | None = None,
) -> float:
    """Validate, train and track one configuration; returns the final mean test latent MCC
    (``data=lm``: normalised MSE; ``+cache=build``: the number of tokens cached). Holds
    ``run_dir``'s lock throughout; ``hydra_files`` (``.hydra/*.yaml``) are written with the run's
    first outputs, or at once when the config is invalid and the folder holds no earlier run."""
    with hold(run_dir):
        return _run(cfg, run_dir, identity or Identity(), hydra_files or {})


def _run(cfg: DictConfig, run_dir: Path, identity: Identity, files: Mapping[str, str]) -> float:
    require_extras(cfg)
    from sparsegap import checkpoint  # heavy imports after validation
    from sparsegap.model import build
    from sparsegap.train import train, train_activations
    from sparsegap.validate import fill_defaults, validate

    try:
        validate(cfg)
    except ConfigError:
        if not holds_outputs(run_dir):  # a multirun's report reads why the job stopped here
            for relative, text in files.items():
                write_text_atomic(run_dir / relative, text)
        raise
    fill_defaults(cfg)
    keep_freed_memory()
    if cfg.device.threads is not None:
        torch.set_num_threads(cfg.device.threads)
    if cfg.cache is not None:
        return harvest(cfg, run_dir, files, identity)
    lm = is_lm(cfg)
    key = "normalised_mse/test" if lm else "latent_mcc/test"
    if cfg.skip_completed:
        done = checkpoint.completed_run(cfg, run_dir)
        if done is not None:
            print(f"{run_dir}: already holds a completed run of this config, skipped")
            return float((done["final"] or {}).get(key, {}).get("mean", float("nan")))
    resumed = False
    if lm:
        run_dir, resumed = _continued_run(cfg, run_dir)
    with Tracker(
        run_dir, to_container(cfg), _logger(cfg), identity.group, identity.name, resumed, files,
        tags=(*run_tags(cfg), *identity.tags),
    ) as tracker:  # fmt: skip
        if lm:
            train_activations(cfg, run_dir, tracker)
            saved = checkpoint.folder_of(run_dir)  # the model and the config that rebuilds it
            tracker.log_artifact([saved / "model.safetensors", saved / "config.json"])
        else:
            model = build(cfg)
            train(model, tracker)
            model.save(run_dir / "model.pt")
            tracker.log_artifact([run_dir / "model.pt"])
    print_summary(tracker, run_dir)
    return float((tracker.last or {})[key]["mean"])


def _logger(cfg: DictConfig) -> dict | None:
    return to_container(cfg.logger) if cfg.logger.name == "wandb" else None


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags every run of ``cfg`` carries: its scenario and encoder, and ``quick`` when it
    trains fewer steps than the scenario's paper length (its numbers are not the paper's)."""
    tags = [cfg.scenario.name, cfg.encoder.name]
    if not is_lm(cfg) and cfg.steps < cfg.scenario.steps:
        tags.append("quick")
    return tags


def _continued_run(cfg: DictConfig, run_dir: Path) -> tuple[Path, bool]:
    """The folder an activation run writes to: ``run_dir``, continued from its checkpoint when
    it has one; with ``resume=true`` and none, the newest sibling run with this config. Also
    whether it continues a checkpoint."""
    from sparsegap import checkpoint

    if not checkpoint.exists(run_dir) and cfg.resume:
        found = checkpoint.find_resumable(cfg, run_dir)
        if found is None:
            raise ConfigError(
                f"resume=true is invalid: no run under {run_dir.parent} has a checkpoint of this"
                " configuration; run without resume=true to start one"
            )
        run_dir = found
    if not checkpoint.exists(run_dir):
        return run_dir, False
    checkpoint.check_compatible(cfg, run_dir)
    step = checkpoint.read_state(run_dir)["step"]
    checkpoint.truncate_metrics(run_dir, step)
    print(f"resuming {run_dir} from step {step}", file=sys.stderr)
    return run_dir, True


def harvest(
    cfg: DictConfig,
    run_dir: Path,
    files: Mapping[str, str] | None = None,
    identity: Identity | None = None,
) -> float:
    """``+cache=build``: write the activations to disk; returns the tokens cached."""
    from sparsegap.data.activations import build_cache

    identity = identity or Identity()
    with Tracker(
        run_dir, to_container(cfg), _logger(cfg), identity.group, identity.name, files=files,
        job_type="harvest", tags=identity.tags,
    ) as tracker:  # fmt: skip
        manifest = build_cache(cfg, progress=cfg.progress and sys.stdout.isatty())
        tracker.log(
            {"step": 0, "tokens": manifest["tokens"], "tokens_per_s": manifest["tokens_per_s"]}
        )
    print(
        f"cache {manifest['folder']}: {manifest['tokens']:,} tokens × d={manifest['dim']}"
        f" ({manifest['dtype']}), {manifest['tokens_per_s']:,.0f} tokens/s"
    )
    return float(manifest["tokens"])


def print_summary(tracker: Tracker, run_dir: Path) -> None:
    """The last evaluation as a table (metric, mean, std across replicas), the FLOPs and the
    best test latent MCC over training, one column of names wide enough for them all."""
    final = tracker.last or {}
    rows: list[tuple[str, str, str]] = [
        (k, f"{v['mean']:.4g}", f"{v['std']:.3g}")
        for k, v in final.items()
        if isinstance(v, dict) and not k.startswith("dead")
    ]
    for key in ("flops/train_cumulative", "flops/inference_test", "flops/total"):
        if key in final:
            rows.append((key, f"{final[key]:.3g}", ""))
    best = tracker.best.get("latent_mcc/test")
    if best is not None:
        rows.append(("best latent_mcc/test", f"{best:.4g}", ""))
    width = max((len(name) for name, _, _ in rows), default=10)
    lines = [f"{'metric':<{width}}  {'mean':>10}  {'std':>9}"]
    lines += [f"{name:<{width}}  {mean:>10}  {std:>9}".rstrip() for name, mean, std in rows]
    lines.append(f"step {final.get('step')} · {final.get('wall_time_s', 0):.1f} s · {run_dir}")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="pkg://sparsegap.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    identity = wandb_identity(cfg, hydra_cfg, multirun)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    files = hydra_files(cfg, hydra_cfg)  # before run() fills in defaults: what was composed
    return run_entry_point(lambda: run(cfg, run_dir, identity, files), multirun)


NAME_LENGTH = 100  # characters of a W&B run name, beyond which swept values are left out


def wandb_identity(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> Identity:
    """A run's W&B group, name and preset tag.

    group: ``logger.group``, else the multirun's sweep folder (its name holds the launch time,
    so each invocation of a preset is its own group). name: scenario, encoder and, in a
    multirun, this job's values of the overrides the sweep varies (``unknown-mlp-data.K=5``),
    whole ``key=value`` items only. tags: the preset (``+experiment=NAME``)."""
    preset = hydra_cfg.runtime.choices.get("experiment")
    group = cfg.logger.group or (Path(hydra_cfg.sweep.dir).name if multirun else None)
    name = f"{cfg.scenario.name}-{cfg.encoder.name}"
    if multirun:
        values = _override_values(list(hydra_cfg.overrides.task))
        swept = [k for k in _swept_keys(hydra_cfg) if k not in ("scenario", "encoder")]
        items = [f"{k}={values[k]}" for k in swept if k in values]
        for count in range(len(items), 0, -1):
            candidate = f"{name}-{','.join(items[:count])}"
            if len(candidate) <= NAME_LENGTH or count == 1:
                name = candidate + ("" if count == len(items) else f",+{len(items) - count}")
                break
    return Identity(group, name, (preset,) if preset else ())


def _override_values(overrides: list[str]) -> dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed}


def _swept_keys(hydra_cfg: DictConfig) -> list[str]:
    """The keys a multirun varies, in the order given: its sweeper's ``params`` (presets) and
    the command line's sweep overrides (``data.K=3,5``). A job sees only its own values, so
    the command line is read from the sweep's ``multirun.yaml`` (Hydra's sweeper writes it
    before launching, whichever the launcher)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = hydra_cfg
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        sweep = OmegaConf.load(saved).hydra
    params = sweep.sweeper.get("params") or {}
    lines = [*(f"{k}={v}" for k, v in params.items()), *sweep.overrides.task]
    swept: dict[str, bool] = {}  # a command-line value replaces the preset's sweep of its key
    for override in OverridesParser.create().parse_overrides(lines):
        swept[override.key_or_group] = override.is_sweep_override()
    return [key for key, is_sweep in swept.items() if is_sweep]


def hydra_files(cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, str]:
    """The ``.hydra/`` files Hydra would have written (its ``config.yaml``, ``hydra.yaml`` and
    ``overrides.yaml``), for the run to write at the right moment."""
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


def main() -> None:
    """The console script and ``python -m sparsegap``: ``--help`` (``-h``) prints every group,
    option and field from the schemas (sparsegap/cli_help.py); everything else goes to Hydra
    (``--hydra-help`` for Hydra's own). A single run's config is composed and checked first
    (``sparsegap.precheck``), so that an invalid one is one ``error:`` line and exit code 2, and
    Hydra never creates its run folder."""
    os.environ.setdefault("WANDB_SILENT", "true")
    args = sys.argv[1:]
    if any(arg in ("--help", "-h") for arg in args):
        from sparsegap.cli_help import render

        print(render())
        return
    check_command_line(args, check_run)
    _register_sweeper()
    _hydra_main()


def _register_sweeper() -> None:
    """Make ``hydra/sweeper=sparsegap`` known to Hydra, which finds plugins by scanning the
    ``hydra_plugins`` namespace: an editable install hides the sweeper from that scan. Imported
    after the scan, which executes again every module it finds, Hydra's basic sweeper included:
    a subclass of the class it replaces would fail in ``super()``."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scans, the first time
    from hydra_plugins.sparsegap_sweeper.sweeper import SparsegapSweeper

    plugins.register(SparsegapSweeper)


if __name__ == "__main__":
    main()
