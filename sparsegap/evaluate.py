"""Evaluation: every metric of a run at one point of training, as one record for the tracker.
``evaluate`` for synthetic runs (against the true codes and dictionary), ``evaluate_activations``
for activation runs (reconstruction of held-out tokens)."""

from __future__ import annotations

import time

import torch

from sparsegap import metrics
from sparsegap.encoders import Encoder
from sparsegap.flops import Flops
from sparsegap.model import Model
from sparsegap.step import Step
from sparsegap.tracking import Record

Tensor = torch.Tensor


class NonFiniteLoss(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""


@torch.no_grad()
def evaluate(model: Model, step: int, train_flops: Flops, started: float, trainer: Step) -> Record:
    """All metrics of a synthetic run at one point of training, per replica where they vary by
    replica (the evaluator of synthetic runs)."""
    data, encoder, decoder = model.data, model.encoder, model.decoder
    assert data is not None
    codes_train = encoder(data.x_train)
    if decoder is not None:
        codes_test = encoder.infer(data.x_test, decoder.weight)
        inference = encoder.infer_flops(data.x_test.shape[1])
    else:
        codes_test = encoder(data.x_test)
        inference = encoder.forward_flops(data.x_test.shape[1])
    record: Record = {
        "step": step,
        "wall_time_s": time.perf_counter() - started,
        "flops/train_cumulative": train_flops.total * step,
        "flops/inference_test": inference.total,
        "flops/total": train_flops.total * step + inference.total,
        "latent_mcc/train": metrics.latent_mcc(data.codes_train, codes_train).tolist(),
        "latent_mcc/test": metrics.latent_mcc(data.codes_test, codes_test).tolist(),
    }
    if decoder is not None and decoder.learned:
        similarity = model.cfg.metrics.dictionary_similarity
        record["dictionary_mcc"] = metrics.dictionary_mcc(
            data.dictionary, decoder.weight, similarity
        ).tolist()
    for split, x, true, codes in (
        ("train", data.x_train, data.codes_train, codes_train),
        ("test", data.x_test, data.codes_test, codes_test),
    ):
        for name, value in model.losses(x, true, codes).named().items():
            record[f"{name}/{split}"] = value.tolist()
        record[f"l0/{split}"] = metrics.l0(codes).tolist()
        record[f"l0_thresholded/{split}"] = metrics.l0_thresholded(codes).tolist()
        record[f"l1/{split}"] = metrics.l1(codes).tolist()
    record["dead_latents/test"] = metrics.dead_latents(codes_test).tolist()
    record.update(_state_metrics(encoder))
    if model.true_coherence is not None:
        for kind, value in model.true_coherence.items():
            record[f"data/coherence_{kind}"] = value
    _check_finite(record, "loss/total/train", step)
    return record


def _state_metrics(encoder: Encoder) -> Record:
    return {name: value.double().tolist() for name, value in encoder.state_metrics().items()}


def _check_finite(record: Record, key: str, step: int) -> None:
    if not all(torch.isfinite(torch.tensor(record[key]))):
        raise NonFiniteLoss(f"training loss is not finite at step {step}: {key}={record[key]}")


@torch.no_grad()
def evaluate_activations(
    model: Model, step: int, train_flops: Flops, started: float, trainer: Step, x_test: Tensor
) -> Record:
    """Metrics of an activation run (``data=lm``) on the held-out tokens ``x_test`` (d, T):
    losses, normalised MSE, explained variance, L0, L1 and dead latents (none firing on the
    test tokens, and, over training, none firing in the last ``metrics.dead_window`` tokens,
    as a count and a fraction); train losses and L0 are means over the steps since the last
    evaluation. The encoder runs on ``data.batch_tokens`` tokens at a time."""
    encoder, decoder, cfg = model.encoder, model.decoder, model.cfg
    assert decoder is not None
    tokens = trainer.samples
    elapsed = trainer.elapsed()
    inference = encoder.infer_flops(x_test.shape[1])
    record: Record = {
        "step": step,
        "tokens": tokens,
        "wall_time_s": elapsed,
        "tokens_per_s": (tokens - trainer.samples_at_start)
        / max(time.perf_counter() - started, 1e-9),
        "flops/train_cumulative": train_flops.total * step,
        "flops/inference_test": inference.total,
        "flops/total": train_flops.total * step + inference.total,
    }
    record.update(trainer.pop_means())
    parts: dict[str, list[Tensor]] = {}
    recon, fired = [], torch.zeros(decoder.weight.shape[0], encoder.latents, device=model.device)
    for x in x_test.split(cfg.data.batch_tokens, dim=1):
        codes = encoder.infer(x, decoder.weight)
        for name, value in model.losses(x, None, codes).named().items():
            parts.setdefault(f"{name}/test", []).append(value * x.shape[1])
        parts.setdefault("l0/test", []).append(metrics.l0(codes) * x.shape[1])
        parts.setdefault("l1/test", []).append(metrics.l1(codes) * x.shape[1])
        fired += (codes > 0).sum(dim=2)
        recon.append(decoder(codes))
    for name, values in parts.items():
        record[name] = (torch.stack(values).sum(dim=0) / x_test.shape[1]).tolist()
    reconstruction = torch.cat(recon, dim=2)
    record["normalised_mse/test"] = metrics.normalised_mse(x_test, reconstruction).tolist()
    record["explained_variance/test"] = metrics.explained_variance(x_test, reconstruction).tolist()
    record["dead_latents/test"] = (fired == 0).sum(dim=1).double().tolist()
    dead = metrics.dead_in_window(trainer.last_fired, tokens, cfg.metrics.dead_window)
    record["dead_latents/window"] = dead.tolist()
    record["dead_latents_fraction/window"] = (dead / encoder.latents).tolist()
    record.update(_state_metrics(encoder))
    trainer.density = fired / x_test.shape[1]  # for the tracker's histogram
    _check_finite(record, "loss/total/test", step)
    return record
