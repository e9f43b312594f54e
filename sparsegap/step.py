"""One training step of every replica (``Step``): the encoder's own update, its fused kernels,
its hand-written backward or autograd, whichever the encoder offers for this run, then Adam; with
the running train statistics an activation run logs and checkpoints."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import torch

from sparsegap.accel import graph
from sparsegap.encoders.base import FusedStep
from sparsegap.model import Model
from sparsegap.optim import Adam
from sparsegap.scenarios import Losses
from sparsegap.validate import graph_enabled

Tensor = torch.Tensor


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
        # The full training batch, the same tensor every step (what a CUDA graph can capture).
        self.batches_are_static = batches is None and model.stream is None
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
        # Set by sparsegap.accel.graph: (lr, l1_coeff) of the next step as device tensors, so a
        # captured graph bakes in no host values.
        self.device_scalars: Callable[[], tuple[Tensor, Tensor]] | None = None
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
        # In bf16 the encoder may take that step, Adam included, as fused kernels.
        self.fused: FusedStep | None = None
        if self.fast and self.autocast:
            assert decoder is not None
            self.fused = encoder.fused_step(decoder, self.optimiser, torch.bfloat16)

    def __call__(self) -> None:
        model = self.model
        x, true_codes = next(self.batches), None
        if isinstance(x, tuple):  # a streamed synthetic batch: its own true codes
            x, true_codes = x
        if not model.trains:
            return
        # A fused step keeps the atoms at unit norm itself, in its Adam pass.
        if model.decoder is not None and self.fused is None:
            model.decoder.renormalise_()
        self.samples += x.shape[1]
        if model.encoder.train_step(x, model.decoder):  # the encoder did the whole step itself
            return
        if self.device_scalars is not None:  # captured graphs (sparsegap/accel/graph.py)
            self.optimiser.lr, l1_coeff = self.device_scalars()
        else:
            l1_coeff = self._ramp()
        if self.fused is not None:
            assert isinstance(l1_coeff, float)
            self._fused_step(x, l1_coeff)
            return
        if self.fast:
            self._hand_step(x, l1_coeff)
        else:
            self._autograd_step(x, l1_coeff, true_codes)

    def _ramp(self) -> float | Tensor:
        """Ramp the optimiser's learning rate over its warm-up, linearly from 0, and return
        this step's L1 coefficient, ramped likewise."""
        t = self.optimiser.t + 1
        if self.lr_warmup > 0:
            self.optimiser.lr = self.lr * min(1.0, t / self.lr_warmup)
        if self.l1_warmup == 0:
            return self.l1_coeff
        l1 = self.l1_coeff * min(1.0, t / self.l1_warmup)
        # A tensor, so a compiled loss does not recompile; the fused step takes a float.
        return l1 if self.fused is not None else torch.tensor(l1, device=self.model.device)

    def run(self, steps: int) -> None:
        """Take ``steps`` steps."""
        for _ in range(steps):
            self()

    def _fused_step(self, x: Tensor, l1_coeff: float) -> None:
        """The encoder's fused kernels (``Encoder.fused_step``): the whole step, Adam included."""
        assert self.fused is not None
        stats = self.fused(x, l1_coeff, self.track)
        if stats is not None:
            mse, l1, l0, fired = stats
            self._add(Losses(total=mse + l1_coeff * l1, mse=mse, l1=l1), l0, fired)

    def _hand_step(self, x: Tensor, l1_coeff: float | Tensor) -> None:
        """The encoder's hand-written forward and backward (``Encoder.fast_step``), then Adam."""
        model = self.model
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

    def _autograd_step(
        self, x: Tensor, l1_coeff: float | Tensor, true_codes: Tensor | None
    ) -> None:
        """The scenario's loss through autograd (in bf16 under ``device.autocast=bf16``), then
        Adam."""
        self.optimiser.zero_grad()
        if self.autocast:
            with torch.autocast(self.model.device.type, dtype=torch.bfloat16):
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


def runner(
    trainer: Step, progress: Callable[[int], object] = lambda steps: None
) -> Callable[[int], None]:
    """What takes n steps of ``trainer``, telling ``progress`` how many it took as it goes:
    replays of captured CUDA graphs where ``device.graph`` resolves on
    (sparsegap/accel/graph.py), else one call of ``trainer`` per step."""
    cfg = trainer.model.cfg
    if trainer.batches_are_static and graph_enabled(cfg):
        return graph.CapturedSteps(trainer, cfg.device.graph_steps, progress)

    def run(steps: int) -> None:
        for _ in range(steps):
            trainer()
            progress(1)

    return run


def make_step(model: Model, batches: Iterator[Tensor] | None = None) -> Step:
    """The training step of ``model`` (see ``Step``); a zero-argument callable."""
    return Step(model, batches)
