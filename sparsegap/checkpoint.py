"""Self-describing, resumable checkpoints of activation runs (``data=lm``).

``<run>/checkpoint/`` holds ``config.json`` (the full resolved config, with the filled-in d and
input scale), ``model.safetensors`` (encoder and decoder, replica axis kept: ``decoder.weight``
is (R, d, L)), ``trainer.safetensors`` (Adam moments and step counts, running train sums, the
token count at which each latent last fired) and ``state.json`` (step, tokens = the data
position, wall time). It is written to a temporary folder and renamed into place, so a kill
leaves the previous checkpoint or the new one, never a mix. ``load_model`` rebuilds the trained
encoder and decoder from it without any data. ``identity`` (the config without the keys that may
change between a run and its continuation) also decides, for any run, whether a folder already
holds a completed run of a config (``completed_run``, for ``skip_completed=true``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from sparsegap.config import ConfigError, to_container
from sparsegap.model import Model, build
from sparsegap.step import Step
from sparsegap.tracking import holder

FOLDER = "checkpoint"
# Keys that may change between a run and its continuation (not what is trained, nor how).
_FREE_KEYS = (
    "resume", "skip_completed", "progress", "logger", "device", "compile", "checkpoint_every",
    "cache",
)  # fmt: skip
_FREE_DATA_KEYS = ("dim", "input_scale", "model_device", "prefetch", "model_batch")


def folder_of(run_or_checkpoint_dir: str | Path) -> Path:
    """The checkpoint folder of a run folder (or the folder itself)."""
    path = Path(run_or_checkpoint_dir)
    if (path / "model.safetensors").is_file():
        return path
    for candidate in (path / FOLDER, path / f".{FOLDER}.old"):  # .old: killed mid-rename
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint in {path} (expected {path / FOLDER}/)")


def exists(run_dir: Path) -> bool:
    try:
        folder_of(run_dir)
    except FileNotFoundError:
        return False
    return True


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def model_state(model: Model) -> dict[str, torch.Tensor]:
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    if model.decoder is not None:
        state["decoder.weight"] = model.decoder.weight
    return _contiguous(state)


def save(run_dir: Path, model: Model, trainer: Step, step: int, wall_time_s: float) -> Path:
    """Write ``run_dir/checkpoint`` atomically (temporary folder, fsync, rename)."""
    final = run_dir / FOLDER
    tmp, old = run_dir / f".{FOLDER}.tmp", run_dir / f".{FOLDER}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(to_container(model.cfg), indent=2))
    save_file(model_state(model), tmp / "model.safetensors")
    save_file(_contiguous(trainer.state_dict()), tmp / "trainer.safetensors")
    state = {"step": step, "tokens": trainer.samples, "wall_time_s": wall_time_s}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # else .old is the last good one (a kill mid-rename): keep it till now
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_config(run_or_checkpoint_dir: str | Path) -> DictConfig:
    return OmegaConf.create(
        json.loads((folder_of(run_or_checkpoint_dir) / "config.json").read_text())
    )


def read_state(run_or_checkpoint_dir: str | Path) -> dict[str, Any]:
    return json.loads((folder_of(run_or_checkpoint_dir) / "state.json").read_text())


def load_model(
    run_or_checkpoint_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Model, DictConfig]:
    """The trained encoder and decoder of a run (its folder or its ``checkpoint/``) and the
    run's config. ``model.encoder(x)`` gives codes (R, L, B) for x (d, B) in the training
    scale: multiply activations by ``cfg.data.input_scale`` first; ``model.decoder(codes)``
    reconstructs (R, d, B). The model's ``data`` is None (no activations are loaded)."""
    folder = folder_of(run_or_checkpoint_dir)
    cfg = read_config(folder)
    model = build(cfg, torch.device(device))
    restore(model, folder)
    model.encoder.eval()
    return model, cfg


def restore(model: Model, run_or_checkpoint_dir: str | Path) -> None:
    """Load the checkpoint's encoder and decoder into ``model`` (same config)."""
    state = load_file(folder_of(run_or_checkpoint_dir) / "model.safetensors")
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    model.encoder.load_state_dict(encoder)
    if model.decoder is not None:
        with torch.no_grad():
            model.decoder.weight.copy_(state["decoder.weight"])


def restore_trainer(trainer: Step, run_or_checkpoint_dir: str | Path) -> dict[str, Any]:
    """Load the optimiser and trackers into ``trainer``; returns state.json."""
    folder = folder_of(run_or_checkpoint_dir)
    trainer.load_state_dict(load_file(folder / "trainer.safetensors"))
    state = read_state(folder)
    trainer.elapsed_before = state["wall_time_s"]
    return state


def identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to continue another: the config without the free keys."""
    config = cfg if isinstance(cfg, dict) else to_container(cfg)
    config = {k: v for k, v in config.items() if k not in _FREE_KEYS}
    config["data"] = {k: v for k, v in config["data"].items() if k not in _FREE_DATA_KEYS}
    return config


def completed_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """``skip_completed=true``: the summary of ``run_dir`` when it holds a completed run of this
    config (same ``identity``, status ``completed``, its model saved), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if summary.get("status") != "completed" or not isinstance(summary.get("config"), dict):
        return None
    if not ((run_dir / "model.pt").is_file() or exists(run_dir)):
        return None
    return summary if identity(summary["config"]) == identity(cfg) else None


def check_compatible(cfg: DictConfig, run_dir: Path) -> None:
    """Raise ConfigError when ``run_dir``'s checkpoint was trained with another config."""
    ours, theirs = (
        identity(cfg),
        identity(json.loads((folder_of(run_dir) / "config.json").read_text())),
    )
    if ours != theirs:
        keys = _differences(ours, theirs)
        raise ConfigError(
            f"{', '.join(keys)} differ from the checkpoint in {run_dir}: it cannot continue"
            " with this config; use another output folder (hydra.run.dir=...) or the same"
            " values"
        )


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}={x!r} (checkpoint: {y!r})")
    return keys


def find_resumable(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``resume=true``: the newest sibling of ``run_dir`` (another run under the same parent)
    whose checkpoint has this config, or None."""
    candidates = []
    for folder in run_dir.parent.glob(f"*/{FOLDER}/config.json"):
        run = folder.parent.parent
        if run == run_dir or holder(run) is not None:  # a live run is not taken over
            continue
        if identity(json.loads(folder.read_text())) == identity(cfg):
            candidates.append((folder.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the metrics.jsonl lines logged after the checkpoint's step (the continuation logs
    them again)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):  # a line cut by the kill
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
