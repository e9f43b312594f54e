"""The model of a run: its data (synthetic, with ground truth) or none (activations), encoder,
decoder and scenario, built freshly initialised from a config (``build``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from sparsegap.config import is_lm, latents_of
from sparsegap.data import SyntheticData, coherence, make_streamed, make_synthetic
from sparsegap.data.synthetic import StreamBatch
from sparsegap.decoder import Decoder
from sparsegap.encoders import ENCODERS, Encoder
from sparsegap.encoders.base import InferenceEncoder
from sparsegap.encoders.layers import replica_generators
from sparsegap.flops import Flops, adam_update, reconstruction_loss
from sparsegap.runtime import resolve_device
from sparsegap.scenarios import SCENARIOS, Losses, Scenario
from sparsegap.validate import fill_defaults


@dataclass
class Model:
    """Everything a run trains and evaluates."""

    cfg: DictConfig
    data: SyntheticData | None  # synthetic data with its ground truth; None for activations
    encoder: Encoder
    decoder: Decoder | None
    scenario: Scenario
    device: torch.device
    # Measured mean and max |cosine| between the true atoms (synthetic data only), logged with
    # every evaluation so a coherence sweep can be read off its own metrics.
    true_coherence: dict[str, float] | None = None
    # data.stream_batch > 0: the training batches, drawn on the fly; ``data`` then holds only the
    # first of them (train-split metrics) and the test set.
    stream: Iterator[StreamBatch] | None = None

    def losses(
        self,
        x: torch.Tensor,
        true_codes: torch.Tensor | None,
        codes: torch.Tensor,
        l1_coeff: float | torch.Tensor | None = None,
    ) -> Losses:
        atoms = self.decoder.weight if self.decoder is not None else None
        return self.scenario.loss(
            codes,
            x,
            true_codes,
            atoms,
            self.cfg.l1_coeff if l1_coeff is None else l1_coeff,
            l1_penalty=self.encoder.l1_penalty,
            auxiliary=self.encoder.auxiliary_losses(x, codes, atoms),
            # None keeps the unweighted loss (bit for bit) unless weights were asked for
            importance=self.data.importance if self.data is not None and self.weighted else None,
            cosine=self.cfg.scenario.cosine,
        )

    @property
    def weighted(self) -> bool:
        """Whether the loss weights features by importance (``data.importance``)."""
        return self.data is not None and self.cfg.data.importance != "none"

    @property
    def samples_per_step(self) -> int:
        """Samples (tokens) of one training step: the full training set, or one batch."""
        return self.cfg.data.batch_tokens if self.data is None else self.data.x_train.shape[1]

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
        samples = self.samples_per_step
        own = self.encoder.train_step_flops(samples)
        if own is not None:  # the encoder trains itself (Encoder.train_step): no Adam step
            return own
        step = self.encoder.forward_flops(samples) + self.encoder.backward_flops(samples)
        step += self.encoder.auxiliary_flops(samples, self.decoder)
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


def build(cfg: DictConfig, device: torch.device | None = None) -> Model:
    """The model of ``cfg``, freshly initialised: with its synthetic data, or, for ``data=lm``,
    without data (``data.dim`` must be filled in: the source or the checkpoint knows it)."""
    fill_defaults(cfg)  # idempotent; resolves data-dependent defaults (e.g. encoder.k = data.K)
    device = device or resolve_device(cfg.device.name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.device.tf32
        torch.backends.cudnn.allow_tf32 = cfg.device.tf32
    data, stream = None, None
    if not is_lm(cfg) and cfg.data.stream_batch > 0:
        data, stream = make_streamed(cfg.data)
        data = data.to(device)
    elif not is_lm(cfg):
        data = make_synthetic(cfg.data).to(device)
    dim = cfg.data.dim if data is None else cfg.data.M
    scenario = SCENARIOS[cfg.scenario.name]
    latents = latents_of(cfg)
    generators = replica_generators(cfg.seed, cfg.replicas, cfg.init)
    encoder = ENCODERS[cfg.encoder.name](
        cfg.encoder,
        dim=dim,
        latents=latents,
        generators=generators,
        train_samples=cfg.data.batch_tokens if data is None else data.x_train.shape[1],
        l1_coeff=cfg.l1_coeff,
    )
    decoder = None
    if scenario.decoder != "none":
        decoder = Decoder(
            dim,
            latents,
            generators,
            normalise=cfg.encoder.normalise_decoder,
            fixed=data.dictionary if scenario.decoder == "fixed" else None,
        )
        decoder.to(device)
    if isinstance(encoder, InferenceEncoder) and device.type == "cuda":
        # Its iterative inference as replays of captured CUDA graphs (sparsegap/accel/graph.py)
        encoder.inference.captured = cfg.device.graph != "off"
    true_coherence = None if data is None else coherence(data.dictionary)
    return Model(cfg, data, encoder.to(device), decoder, scenario, device, true_coherence, stream)
