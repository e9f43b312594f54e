"""The one training loop every scenario and encoder shares.

config → data → encoder (+ decoder) → scenario loss → Adam steps → evaluation → tracker.
All R replicas train together: their parameters carry a leading replica axis and their losses
are summed, so each replica follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from sparsegap import metrics
from sparsegap.config import fill_defaults, latents_of, resolve_device
from sparsegap.data import SyntheticData, make_synthetic
from sparsegap.decoder import Decoder
from sparsegap.encoders import ENCODERS, Encoder
from sparsegap.encoders.layers import replica_generators
from sparsegap.flops import Flops, adam_update, reconstruction_loss
from sparsegap.optim import Adam
from sparsegap.scenarios import SCENARIOS, Losses, Scenario
from sparsegap.tracking import Record, Tracker


class NonFiniteLoss(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""


@dataclass
class Model:
    """Everything a run trains and evaluates."""

    cfg: DictConfig
    data: SyntheticData
    encoder: Encoder
    decoder: Decoder | None
    scenario: Scenario
    device: torch.device

    def losses(self, x: torch.Tensor, true_codes: torch.Tensor, codes: torch.Tensor) -> Losses:
        atoms = self.decoder.weight if self.decoder is not None else None
        return self.scenario.loss(
            codes,
            x,
            true_codes,
            atoms,
            self.cfg.l1_coeff,
            l1_penalty=self.encoder.l1_penalty,
            auxiliary=self.encoder.auxiliary_losses(x, codes, atoms),
            # None keeps the unweighted loss (bit for bit) unless weights were asked for
            importance=None if self.cfg.data.importance == "none" else self.data.importance,
        )

    def save(self, path: Path) -> None:
        """The trained state for later analysis (e.g. the report's DᵀD heatmaps, paper App. C):
        ``{"decoder": (R, M, L) atoms or None, "encoder": state_dict}``, written atomically."""
        state = {
            "decoder": None if self.decoder is None else self.decoder.weight.detach().cpu(),
            "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @property
    def trains(self) -> bool:
        learned = self.decoder is not None and self.decoder.learned
        return self.encoder.needs_training(learned)

    def train_step_flops(self) -> Flops:
        """FLOPs of one full-batch training step, per replica (0 when nothing trains)."""
        if not self.trains:
            return Flops()
        samples = self.data.x_train.shape[1]
        own = self.encoder.train_step_flops(samples)
        if own is not None:  # the encoder trains itself (Encoder.train_step): no Adam step
            return own
        step = self.encoder.forward_flops(samples) + self.encoder.backward_flops(samples)
        step += self.encoder.auxiliary_flops(samples, self.decoder is not None)
        params = self.encoder.parameters_per_replica()
        if self.decoder is not None:
            learned = self.decoder.learned
            forward, backward = reconstruction_loss(
                self.encoder.latents, self.encoder.dim, samples, learned
            )
            step += forward + backward + self.decoder.step_flops()
            params += self.encoder.dim * self.encoder.latents if learned else 0
        else:  # cosine regression: normalise both sides, dot products, and their gradient
            step += Flops(elementwise=12 * self.encoder.latents * samples)
        return step + adam_update(params)


def build(cfg: DictConfig) -> Model:
    fill_defaults(cfg)  # idempotent; resolves data-dependent defaults (e.g. encoder.k = data.K)
    device = resolve_device(cfg.device.name)
    data = make_synthetic(cfg.data).to(device)
    scenario = SCENARIOS[cfg.scenario.name]
    latents = latents_of(cfg)
    generators = replica_generators(cfg.seed, cfg.replicas)
    encoder = ENCODERS[cfg.encoder.name](
        cfg.encoder,
        dim=cfg.data.M,
        latents=latents,
        generators=generators,
        train_samples=cfg.data.train_samples,
        l1_coeff=cfg.l1_coeff,
    )
    decoder = None
    if scenario.decoder != "none":
        decoder = Decoder(
            cfg.data.M,
            latents,
            generators,
            normalise=cfg.encoder.normalise_decoder,
            fixed=data.dictionary if scenario.decoder == "fixed" else None,
        )
        decoder.to(device)
    return Model(cfg, data, encoder.to(device), decoder, scenario, device)


@torch.no_grad()
def evaluate(model: Model, step: int, train_flops: Flops, started: float) -> Record:
    """All metrics at one point of training, per replica where they vary by replica."""
    data, encoder, decoder = model.data, model.encoder, model.decoder
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
        record[f"l1/{split}"] = metrics.l1(codes).tolist()
    record["dead_latents/test"] = metrics.dead_latents(codes_test).tolist()
    if not all(torch.isfinite(torch.tensor(record["loss/total/train"]))):
        raise NonFiniteLoss(
            f"training loss is not finite at step {step}: {record['loss/total/train']}"
        )
    return record


def make_step(model: Model) -> Callable[[], None]:
    """One full-batch Adam step on every replica, or the encoder's own step when its
    ``train_step`` hook does it (gradient-free dictionary learning)."""
    cfg, data, encoder, decoder = model.cfg, model.data, model.encoder, model.decoder
    params = [p for p in encoder.parameters() if p.requires_grad]
    if decoder is not None and decoder.learned:
        params.append(decoder.weight)
    optimiser = Adam(params, lr=cfg.lr)

    def objective() -> torch.Tensor:
        codes = encoder(data.x_train)
        return model.losses(data.x_train, data.codes_train, codes).total.sum()

    loss_fn = torch.compile(objective) if cfg.compile else objective

    def step() -> None:
        if not model.trains:
            return
        if decoder is not None:
            decoder.renormalise_()
        if encoder.train_step(data.x_train, decoder):  # the encoder did the whole step itself
            return
        optimiser.zero_grad()
        loss_fn().backward()
        optimiser.step()

    return step


def train(model: Model, tracker: Tracker) -> Record:
    """Train for ``cfg.steps`` steps, evaluating at step 0, every ``eval_every`` steps and at the
    end; returns the last evaluation."""
    cfg = model.cfg
    step_fn = make_step(model)
    step_flops = model.train_step_flops()
    started = time.perf_counter()
    show = cfg.progress and sys.stdout.isatty()
    bar = tqdm(total=cfg.steps, disable=not show, desc=f"{cfg.scenario.name}/{cfg.encoder.name}")
    record: Record = {}
    step = 0
    while True:
        # Nothing trains (e.g. ITO from scratch on a fixed dictionary): every evaluation would
        # repeat the first, so only the first and last are run.
        due = step % cfg.eval_every == 0 if model.trains else step == 0
        if due or step == cfg.steps:
            if model.decoder is not None:
                model.decoder.renormalise_()
            record = evaluate(model, step, step_flops, started)
            tracker.log(record)
            bar.set_postfix(
                mcc=f"{_mean(record['latent_mcc/test']):.3f}",
                loss=f"{_mean(record['loss/total/train']):.4g}",
            )
        if step == cfg.steps:
            break
        chunk = min(cfg.eval_every - step % cfg.eval_every, cfg.steps - step)
        if not model.trains:
            chunk = cfg.steps - step
        for _ in range(chunk if model.trains else 0):
            step_fn()
        step += chunk
        bar.update(chunk)
    bar.close()
    return record


def _mean(values: float | list[float]) -> float:
    return sum(values) / len(values) if isinstance(values, list) else values
