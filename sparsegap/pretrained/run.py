"""One measurement: load the SAE → check it against its model's hook → harvest held-out tokens
→ every method → downstream LM loss → results.json, report.md, pareto.png, W&B (offline)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sparsegap.config import ConfigError, to_container
from sparsegap.pretrained.config import METHODS
from sparsegap.pretrained.sae import PretrainedSAE
from sparsegap.runtime import resolve_device


def load(cfg: DictConfig) -> PretrainedSAE:
    from sparsegap.pretrained import loaders

    s = cfg.sae
    if (s.path is None) == (s.release is None):
        raise ConfigError(
            "sae.path or sae.release (with sae.id) must be given, not both: e.g."
            " sae.path=/folder/with/cfg.json or sae.release=gpt2-small-res-jb"
            " sae.id=blocks.8.hook_resid_pre"
        )
    sae = (
        loaders.load_release(s.release, s.id)
        if s.release
        else loaders.load_sae(s.path, s.format, s.replica)
    )
    if s.scaling_factor is not None:
        sae = sae.fold_scaling_factor(s.scaling_factor)
    return sae


def data_config(cfg: DictConfig, sae: PretrainedSAE) -> DictConfig:
    """The activation pipeline's data config: the SAE's model and hook unless overridden."""
    d = OmegaConf.create(to_container(cfg.data))
    d.hook = cfg.data.hook or sae.hook
    if cfg.data.model_path is None:
        d.model = cfg.data.model or sae.model
        if d.model is not None and Path(d.model).is_dir():  # a sparsegap run's local model
            d.model_path = d.model
    if d.hook is None or (d.model is None and d.model_path is None):
        raise ConfigError(
            f"{sae.source} names no {'hook' if d.hook is None else 'model'}: set"
            f" {'data.hook' if d.hook is None else 'data.model or data.model_path'}"
        )
    if d.model is None:
        d.model = Path(d.model_path).name
    return d


def validate(cfg: DictConfig) -> None:
    unknown = [m for m in cfg.gap.methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"gap.methods={list(cfg.gap.methods)} is invalid: {unknown};"
            f" allowed: {', '.join(METHODS)}"
        )
    for key in ("tokens", "batch_tokens", "search_tokens", "search_steps"):
        value = cfg.data.tokens if key == "tokens" else cfg.gap[key]
        if value < 1:
            raise ConfigError(
                f"{'data' if key == 'tokens' else 'gap'}.{key}={value} is invalid:"
                " must be at least 1"
            )
    if not cfg.gap.curve or 1.0 not in list(cfg.gap.curve):
        raise ConfigError(
            f"gap.curve={list(cfg.gap.curve)} is invalid: it must contain 1.0 (the matched point)"
        )


def check_model(model: Any, sae: PretrainedSAE, d: DictConfig) -> None:
    """The hook exists and its width is the SAE's d (before any harvesting)."""
    if d.hook not in model.hook_dict:
        raise ConfigError(
            f"data.hook={d.hook!r} is invalid: the model {d.model_path or d.model} has no such hook"
            " point (e.g. blocks.0.hook_resid_pre …"
            f" blocks.{model.cfg.n_layers - 1}.hook_resid_post)"
        )
    probe = torch.tensor([[model.tokenizer.bos_token_id or 0] * 2])
    from sparsegap.data.activations import stop_layer

    _, cache = model.run_with_cache(probe, names_filter=d.hook, stop_at_layer=stop_layer(d.hook),
                                    return_cache_object=False)  # fmt: skip
    width = cache[d.hook].flatten(2).shape[-1]
    if width != sae.dim:
        raise ConfigError(
            f"{sae.source} has d_in={sae.dim} but {d.hook} of {d.model_path or d.model} has width"
            f" {width}: wrong hook or model (set data.hook / data.model_path)"
        )


def _progress(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            print(f"[pretrained] {message}", file=sys.stderr, flush=True)

    return say


def measure(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The whole measurement; returns results.json's content."""
    from sparsegap.data import activations
    from sparsegap.data.lm_model import load_language_model
    from sparsegap.pretrained import lm_loss, report
    from sparsegap.pretrained.gap import GapMeasurement
    from sparsegap.tracking import Tracker

    validate(cfg)
    say = _progress(cfg.progress)
    sae = load(cfg)
    d = data_config(cfg, sae)
    device = resolve_device(str(cfg.device))
    activations.check_available(d)
    say(f"model {d.model_path or d.model}, hook {d.hook}")
    model = load_language_model(d.model_path or d.model, device, getattr(torch, d.dtype))
    check_model(model, sae, d)
    torch.manual_seed(cfg.seed)
    say(f"harvesting {cfg.data.tokens:,} tokens")
    tokens, rows, mask = lm_loss.harvest(model, d, cfg.data.tokens)
    lm_contexts = min(cfg.gap.lm_contexts, tokens.shape[0])
    keep_rows = int(mask[:lm_contexts].sum())
    sae = sae.to(device)
    measurement = GapMeasurement(sae, rows.to(device), cfg.gap, keep_rows, say)
    measured = measurement.run()
    lm: dict[str, Any] = {}
    if lm_contexts:
        say(f"downstream LM loss on {lm_contexts} contexts")
        lm = lm_loss.downstream(model, d.hook, tokens[:lm_contexts], mask[:lm_contexts],
                                measured.reconstructions)  # fmt: skip
        for point in measured.points:
            if point.multiplier in (None, 1.0) and point.method in lm:
                point.lm = lm[point.method]
    header = {
        "sae": sae.source,
        "architecture": sae.architecture,
        "model": d.model_path or d.model,
        "hook": d.hook,
        "tokens": rows.shape[0],
        "lm_contexts": lm_contexts,
        "dim": sae.dim,
        "latents": sae.latents,
    }
    logger = to_container(cfg.logger) if cfg.logger.name == "wandb" else None
    with Tracker(
        run_dir, to_container(cfg), logger, name=f"pretrained-{sae.architecture}",
        job_type="pretrained", tags=["pretrained", sae.architecture],
    ) as tracker:  # fmt: skip
        for step, point in enumerate(measured.points):
            values = {
                "l0": point.l0,
                "normalised_mse": point.normalised_mse,
                "explained_variance": point.explained_variance,
                "flops_per_token": point.flops_per_token,
                **{f"lm/{k}": v for k, v in point.lm.items()},
            }
            tracker.log({"step": step, **{f"{point.method}/{k}": v for k, v in values.items()}})
        results = report.write(run_dir, header, measured, lm)
    say(f"report: {run_dir / 'report.md'}")
    return results
