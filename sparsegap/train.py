"""The one training loop every scenario, encoder and data source shares.

config → data → encoder (+ decoder) → scenario loss → Adam steps → evaluation → tracker.
The loop consumes a plain iterator of column batches (M, B) and an evaluator callable:
synthetic runs repeat their full training batch and evaluate against the true codes;
language-model runs (``data=lm``) stream activation batches, evaluate reconstruction on held-out
tokens and write resumable checkpoints (sparsegap/checkpoint.py).
All R replicas train together: their parameters carry a leading replica axis and their losses
are summed, so each replica follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from sparsegap import metrics
from sparsegap.config import is_lm, latents_of, to_container
from sparsegap.data import SyntheticData, coherence, make_streamed, make_synthetic
from sparsegap.data.synthetic import StreamBatch
from sparsegap.decoder import Decoder
from sparsegap.encoders import ENCODERS, Encoder
from sparsegap.encoders.layers import replica_generators
from sparsegap.encoders.sae import SAE
from sparsegap.flops import Flops, adam_update, reconstruction_loss
from sparsegap.optim import Adam
from sparsegap.runtime import resolve_device
from sparsegap.scenarios import SCENARIOS, Losses, Scenario
from sparsegap.tracking import Record, Tracker
from sparsegap.validate import check_encoder, fill_defaults

Tensor = torch.Tensor


class NonFiniteLoss(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""


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
    true_coherence = None if data is None else coherence(data.dictionary)
    return Model(cfg, data, encoder.to(device), decoder, scenario, device, true_coherence, stream)


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


class Step:
    """One Adam step on every replica on the next batch of ``batches`` (default: the synthetic
    full training batch, forever), or the encoder's own step when its ``train_step`` hook does
    it (gradient-free dictionary learning). Call it with no arguments.

    ``lr_warmup_steps`` and ``l1_warmup_steps`` ramp the learning rate and ``l1_coeff``
    linearly from 0; ``device.autocast=bf16`` runs the step's matmuls in bfloat16;
    ``compile`` wraps the loss in ``torch.compile``. With ``track`` it keeps, on the device
    and without synchronising, the sums of the loss terms and L0 since the last
    ``pop_means`` and the token count at which each latent last fired (dead latents).
    """

    def __init__(
        self, model: Model, batches: Iterator[Tensor] | None = None, track: bool = False
    ) -> None:
        cfg, encoder, decoder = model.cfg, model.encoder, model.decoder
        self.model, self.track = model, track
        if batches is None and model.stream is not None:
            device = model.device
            batches = ((b.x.to(device), b.codes.to(device)) for b in model.stream)
        elif batches is None:
            assert model.data is not None
            batches = itertools.repeat(model.data.x_train)
        self.batches = batches
        params = [p for p in encoder.parameters() if p.requires_grad]
        if decoder is not None and decoder.learned:
            params.append(decoder.weight)
        self.optimiser = Adam(params, lr=cfg.lr)
        self.samples = 0  # samples (tokens) trained on
        self.samples_at_start = 0  # where this process started (resumed runs: the checkpoint's)
        self.elapsed_before = 0.0  # wall time of the run before this process (resumed runs)
        self.started = time.perf_counter()  # set by the loop when it starts
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.last_fired = torch.zeros(encoder.replicas, encoder.latents, dtype=torch.long)
        self.last_fired = self.last_fired.to(model.device)
        self.density: Tensor | None = None
        self.autocast = cfg.device.autocast == "bf16"
        # Plain floats: reading a DictConfig costs microseconds, and a synthetic step is short.
        self.lr, self.l1_coeff = float(cfg.lr), float(cfg.l1_coeff)
        self.lr_warmup, self.l1_warmup = (
            cfg.lr_warmup_steps,
            cfg.l1_warmup_steps,
        )
        true_codes = None if model.data is None else model.data.codes_train

        def objective(
            x: Tensor, l1_coeff: float | Tensor, true_codes: Tensor | None = true_codes
        ) -> tuple[Tensor, Losses, Tensor]:
            codes = encoder(x)
            losses = model.losses(x, true_codes, codes, l1_coeff)
            return losses.total.sum(), losses, codes

        self.loss_fn = torch.compile(objective) if cfg.compile else objective
        # The encoder's hand-written step where it equals autograd's: a reconstruction loss
        # (scenarios with a decoder) with no per-feature weights and nothing compiled.
        self.fast = (
            encoder.has_fast_step
            and cfg.encoder.fast_step
            and decoder is not None
            and encoder.l1_penalty
            and not model.weighted
            and not cfg.compile
        )
        # On a GPU in bf16 the SAE's hand-written step runs as fused Triton kernels.
        self.fused = _fused_trainer(model, self.optimiser) if self.fast and self.autocast else None

    def __call__(self) -> None:
        model = self.model
        x, true_codes = next(self.batches), None
        if isinstance(x, tuple):  # a streamed synthetic batch: its own true codes
            x, true_codes = x
        if not model.trains:
            return
        # The fused trainer keeps the atoms at unit norm itself, in its Adam pass.
        if model.decoder is not None and self.fused is None:
            model.decoder.renormalise_()
        self.samples += x.shape[1]
        if model.encoder.train_step(x, model.decoder):  # the encoder did the whole step itself
            return
        t = self.optimiser.t + 1
        if self.lr_warmup > 0:
            self.optimiser.lr = self.lr * min(1.0, t / self.lr_warmup)
        l1_value = self.l1_coeff * (min(1.0, t / self.l1_warmup) if self.l1_warmup > 0 else 1.0)
        if self.fused is not None:  # sparsegap.fused: the whole step, Adam included
            stats = self.fused(x, l1_value, self.track)
            if stats is not None:
                mse, l1, l0, fired = stats
                self._add(Losses(total=mse + l1_value * l1, mse=mse, l1=l1), l0, fired)
            return
        l1_coeff: float | Tensor = self.l1_coeff
        if self.l1_warmup > 0:  # a tensor, so a compiled loss does not recompile
            l1_coeff = torch.tensor(l1_value, device=model.device)
        if self.fast:  # the encoder's hand-written forward and backward (Encoder.fast_step)
            assert model.decoder is not None
            low = torch.bfloat16 if self.autocast else x.dtype
            decoder = model.decoder.weight
            mse, l1, codes, grad_atoms = model.encoder.fast_step(
                x.to(low), decoder.detach().to(low), l1_coeff, model.decoder.learned, self.track
            )
            if grad_atoms is not None:
                decoder.grad = grad_atoms.to(decoder.dtype)
            self.optimiser.step()
            if self.track:
                assert mse is not None and l1 is not None
                self._accumulate(Losses(total=mse + l1_coeff * l1, mse=mse, l1=l1), codes)
            return
        self.optimiser.zero_grad()
        if self.autocast:
            with torch.autocast(model.device.type, dtype=torch.bfloat16):
                total, losses, codes = self._loss(x, l1_coeff, true_codes)
        else:
            total, losses, codes = self._loss(x, l1_coeff, true_codes)
        total.backward()
        self.optimiser.step()
        if self.track:
            self._accumulate(losses, codes.detach())

    def _loss(
        self, x: Tensor, l1_coeff: float | Tensor, true_codes: Tensor | None
    ) -> tuple[Tensor, Losses, Tensor]:
        if true_codes is None:  # the full batch: the objective's own training codes
            return self.loss_fn(x, l1_coeff)
        return self.loss_fn(x, l1_coeff, true_codes)

    @torch.no_grad()
    def _accumulate(self, losses: Losses, codes: Tensor) -> None:
        active = codes > 0
        self._add(losses, active.sum(dim=1).float().mean(dim=1), active.any(dim=2))

    def _add(self, losses: Losses, l0: Tensor, fired: Tensor) -> None:
        """Add one step's loss terms and mean L0 (each (R,)) to the sums since the last
        ``pop_means``, and mark the latents that ``fired`` (R, L) as seen now."""
        terms = {f"{name}/train": value.detach() for name, value in losses.named().items()}
        terms["l0/train"] = l0
        for name, value in terms.items():
            previous = self.sums.get(name)
            self.sums[name] = value.float() if previous is None else previous + value.float()
        self.count += 1
        self.last_fired.masked_fill_(fired, self.samples)

    def elapsed(self) -> float:
        """Wall time of the run so far, across resumptions (seconds)."""
        return self.elapsed_before + time.perf_counter() - self.started

    def pop_means(self) -> dict[str, list[float]]:
        """Means of the tracked train terms since the last call (nothing before any step)."""
        means = {name: (value / self.count).tolist() for name, value in self.sums.items()}
        self.sums, self.count = {}, 0
        return means

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to continue exactly: optimiser, trackers, counters."""
        state = {f"optimiser.{k}": v for k, v in self.optimiser.state_dict().items()}
        state |= {f"sums.{k}": v for k, v in self.sums.items()}
        state["last_fired"] = self.last_fired
        state["count"] = torch.tensor(self.count)
        state["samples"] = torch.tensor(self.samples)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        device = self.model.device
        prefix = "optimiser."
        self.optimiser.load_state_dict(
            {k[len(prefix) :]: v.to(device) for k, v in state.items() if k.startswith(prefix)}
        )
        self.sums = {k[5:]: v.to(device) for k, v in state.items() if k.startswith("sums.")}
        self.last_fired.copy_(state["last_fired"])
        self.count = int(state["count"])
        self.samples = self.samples_at_start = int(state["samples"])


def _fused_trainer(model: Model, optimiser: Adam) -> Any:
    """``sparsegap.fused.SAETrainer`` where it applies (a CUDA device, an SAE — or SAE+ITO,
    trained alike — without encoder bias, Triton importable), else None: the plain hand-written
    step runs."""
    encoder, decoder = model.encoder, model.decoder
    # The SAE's own forward and step (a subclass that changes either trains differently).
    plain_sae = (
        isinstance(encoder, SAE)
        and type(encoder).forward is SAE.forward
        and type(encoder).fast_step is SAE.fast_step
        and encoder.linear.bias is None
    )
    if model.device.type != "cuda" or decoder is None or not plain_sae:
        return None
    if torch.cuda.get_device_capability(model.device) < (8, 0):  # Triton's bf16 GEMMs: Ampere+
        return None
    try:
        from sparsegap import fused
    except ImportError:  # a torch build without Triton
        return None
    weight = encoder.linear.weight
    return fused.SAETrainer(weight, decoder, optimiser, torch.bfloat16)


def make_step(model: Model, batches: Iterator[Tensor] | None = None) -> Step:
    """The training step of ``model`` (see ``Step``); a zero-argument callable."""
    return Step(model, batches)


Evaluator = Callable[[Model, int, Flops, float, Step], Record]
Checkpointer = Callable[[Step, int, Record], None]


@dataclass
class Schedule:
    """When the loop evaluates and checkpoints. ``start``: the step a resumed run continues
    from (its evaluation there was logged before the interruption)."""

    steps: int
    eval_every: int
    checkpoint_every: int | None = None  # steps; None = only at the end (when checkpointing)
    start: int = 0


def train(
    model: Model,
    tracker: Tracker,
    trainer: Step | None = None,
    evaluator: Evaluator = evaluate,
    schedule: Schedule | None = None,
    checkpoint: Checkpointer | None = None,
) -> Record:
    """Train for ``schedule.steps`` steps (default ``cfg.steps``), evaluating at step 0, every
    ``eval_every`` steps and at the end, checkpointing every ``checkpoint_every`` steps and at
    the end when ``checkpoint`` is given; returns the last evaluation."""
    cfg = model.cfg
    trainer = trainer or make_step(model)
    schedule = schedule or Schedule(cfg.steps, cfg.eval_every)
    step_flops = model.train_step_flops()
    started = trainer.started = time.perf_counter()
    show = cfg.progress and sys.stdout.isatty()
    bar = tqdm(
        total=schedule.steps,
        initial=schedule.start,
        disable=not show,
        desc=f"{cfg.scenario.name}/{cfg.encoder.name}",
    )
    record: Record = {}
    step, steps, every = schedule.start, schedule.steps, schedule.eval_every
    save_every = schedule.checkpoint_every or max(steps, 1)  # steps=0: evaluate only
    while True:
        # Nothing trains (e.g. ITO from scratch on a fixed dictionary): every evaluation would
        # repeat the first, so only the first and last are run.
        due = step % every == 0 if model.trains else step == 0
        fresh = step > schedule.start or step == 0
        if (due or step == steps) and fresh:
            if model.decoder is not None:
                model.decoder.renormalise_()
            record = evaluator(model, step, step_flops, started, trainer)
            tracker.log(record)
            if trainer.density is not None:
                tracker.log_histogram("feature_density/test", trainer.density, step)
            bar.set_postfix(_progress(record))
        saving = step % save_every == 0 or step == steps
        if checkpoint is not None and step > schedule.start and saving:
            checkpoint(trainer, step, record)
        if step == steps:
            break
        chunk = min(every - step % every, save_every - step % save_every, steps - step)
        if not model.trains:
            chunk = steps - step
        for _ in range(chunk if model.trains else 0):
            trainer()
        step += chunk
        bar.update(chunk)
    bar.close()
    return record


def _progress(record: Record) -> dict[str, str]:
    shown = {"latent_mcc/test": "mcc", "normalised_mse/test": "nmse", "loss/total/train": "loss"}
    return {label: f"{_mean(record[key]):.4g}" for key, label in shown.items() if key in record}


def _mean(values: float | list[float]) -> float:
    return sum(values) / len(values) if isinstance(values, list) else values


def train_activations(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> Record:
    """Train on language-model activations (``data=lm``), continuing from ``run_dir``'s
    checkpoint when there is one (same batches from there on: the stream is replayed to its
    position); checkpoints every ``checkpoint_every`` tokens and at the end."""
    from sparsegap import checkpoint
    from sparsegap.data.activations import ActivationSource

    device = resolve_device(cfg.device.name)
    source = ActivationSource(cfg.data, device, cfg.device.pin_memory)
    resumed = checkpoint.exists(run_dir)
    start = checkpoint.read_state(run_dir)["step"] if resumed else 0
    x_test, batches = source.open(skip=start)
    cfg.data.dim, cfg.data.input_scale = x_test.shape[0], source.input_scale
    check_encoder(cfg)  # the latents (expansion × d) are known only now
    tracker.config = to_container(cfg)
    model = build(cfg, device)
    trainer = Step(model, batches, track=True)
    if resumed:
        checkpoint.restore(model, run_dir)
        checkpoint.restore_trainer(trainer, run_dir)
    every = None
    if cfg.checkpoint_every is not None:
        every = max(1, cfg.checkpoint_every // cfg.data.batch_tokens)
    schedule = Schedule(cfg.steps, cfg.eval_every, every, start)

    def evaluator(model: Model, step: int, flops: Flops, started: float, trainer: Step) -> Record:
        return evaluate_activations(model, step, flops, started, trainer, x_test)

    def save(trainer: Step, step: int, record: Record) -> None:
        checkpoint.save(run_dir, model, trainer, step, trainer.elapsed())

    return train(model, tracker, trainer, evaluator, schedule, save)
