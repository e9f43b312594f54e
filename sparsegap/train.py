"""The one training loop every scenario, encoder and data source shares.

config → data → encoder (+ decoder) → scenario loss → Adam steps → evaluation → tracker.
The loop consumes a plain iterator of column batches (M, B) and an evaluator callable:
synthetic runs repeat their full training batch and evaluate against the true codes;
language-model runs (``data=lm``) stream activation batches, evaluate reconstruction on held-out
tokens and write resumable checkpoints (sparsegap/checkpoint.py).
All R replicas train together: their parameters carry a leading replica axis and their losses
are summed, so each replica follows exactly the trajectory it would follow alone.
The model is built in model.py, one step taken in step.py, the metrics computed in evaluate.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from sparsegap.config import to_container
from sparsegap.evaluate import evaluate, evaluate_activations
from sparsegap.flops import Flops
from sparsegap.model import Model, build
from sparsegap.runtime import resolve_device
from sparsegap.step import Step, make_step, runner
from sparsegap.tracking import Record, Tracker
from sparsegap.validate import check_encoder

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
    terminal = sys.stdout.isatty()
    bar = tqdm(
        total=schedule.steps,
        initial=schedule.start,
        disable=not (cfg.progress and terminal),
        desc=f"{cfg.scenario.name}/{cfg.encoder.name}",
    )
    # n calls of trainer, or replays of captured CUDA graphs; both move the bar as they go (tqdm
    # redraws at most every 0.1 s)
    run_steps = runner(trainer, bar.update)
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
            bar.set_postfix(_progress(record), refresh=False)
            if cfg.progress and not terminal:  # a log file (SLURM): one line per evaluation
                print(_progress_line(record, steps), flush=True)
        saving = step % save_every == 0 or step == steps
        if checkpoint is not None and step > schedule.start and saving:
            checkpoint(trainer, step, record)
        if step == steps:
            break
        chunk = min(every - step % every, save_every - step % save_every, steps - step)
        if model.trains:
            run_steps(chunk)
        else:
            chunk = steps - step
            bar.update(chunk)
        step += chunk
    bar.close()
    return record


# What the progress shows of an evaluation, and what it calls each number.
SHOWN = {
    "latent_mcc/test": "test latent MCC",
    "normalised_mse/test": "test nMSE",
    "loss/total/train": "train loss",
}


def _progress(record: Record) -> dict[str, str]:
    return {label: f"{_mean(record[key]):.4g}" for key, label in SHOWN.items() if key in record}


def _progress_line(record: Record, steps: int) -> str:
    """One evaluation as a plain line, e.g. ``step 500/40000 · 12.3 s · test latent MCC 0.91``."""
    elapsed = _mean(record.get("wall_time_s", 0.0))
    parts = [f"step {record['step']}/{steps}", f"{elapsed:.1f} s"]
    parts += [f"{label} {value}" for label, value in _progress(record).items()]
    return " · ".join(parts)


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
