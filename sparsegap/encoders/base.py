"""The encoder interface and registry.

An encoder maps a column batch X (M, B) to non-negative codes (R, L, B) for its R replicas (the
losses rely on codes ≥ 0: their L1 term is the plain mean). Subclasses declare
their parameters, their training-time forward, optionally a different test-time ``infer``, and
the FLOPs of each next to them. Nothing else: losses live in scenarios, the loop in train.py —
except for two hooks by which an encoder adapts the scenario's reconstruction loss to its own
training objective: ``l1_penalty`` (whether the scenario's L1 term is added; it is always logged)
and ``auxiliary_losses`` (extra named terms added to the total and logged as ``loss/<name>``),
one by which it reports its own training state (``state_metrics``), and one by which a
gradient-free encoder (dictionary learning) replaces the Adam step with its own update:
``train_step`` (with ``train_step_flops``). Encoders may also offer ``fast_step``: the same
training step as autograd would take on a reconstruction loss, written out by hand, and
``fused_step``: that step with its Adam update as fused kernels on the devices that have them.

Each encoder also declares itself, once, as class attributes: its config schema (``config``, the
Hydra option ``encoder=<name>``), its own value checks (``check``), the scenarios it applies to,
whether it keeps per-sample state, its display name (``label``, ``describe``) and its ``kind``.
The registry, Hydra's config store, scenario applicability, validation and the report's labels
are all derived from these declarations, so a new encoder is one file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from sparsegap.config import EncoderConfig, is_lm, latents_of
from sparsegap.errors import ConfigError, choice, need
from sparsegap.flops import Flops
from sparsegap.inference import INFERENCE

if TYPE_CHECKING:
    from sparsegap.decoder import Decoder
    from sparsegap.optim import Adam

ENCODERS: dict[str, type[Encoder]] = {}
SCENARIO_NAMES = ("known_codes", "known_dictionary", "unknown")
# one-pass: codes from one forward pass (amortised); iterative: an optimisation per sample at
# test time (sparse coding, SAE + ITO, dictionary learning).
KINDS = ("one-pass", "iterative")
# What ``Encoder.fast_step`` returns: per replica (mse, mean(codes)) or (None, None) when not
# asked for, the codes, and the atoms' gradient or None.
HandStep = tuple[Tensor | None, Tensor | None, Tensor, Tensor | None]
# What ``Encoder.fused_step`` returns: the whole training step, Adam included, called with the
# batch x (M, B), the L1 coefficient and whether to return train statistics: per replica (mse,
# mean(codes), mean L0) and which latents fired (R, L), or None when not asked for.
FusedStep = Callable[[Tensor, float, bool], tuple[Tensor, Tensor, Tensor, Tensor] | None]


class Encoder(nn.Module):
    name: ClassVar[str]  # registry name: the option encoder=<name> and encoder.name
    config: ClassVar[type[EncoderConfig]]  # the schema of encoder=<name>, its defaults
    label: ClassVar[str]  # display name in reports and figures (see ``describe``)
    kind: ClassVar[str] = "one-pass"  # one of KINDS
    # The scenarios it applies to (each scenario's ``why_not`` says why the others do not).
    scenarios: ClassVar[tuple[str, ...]] = SCENARIO_NAMES
    # Whether it keeps state per sample of a fixed training set (sparse coding's free codes),
    # which streamed data (data=lm, data.stream_batch > 0) lacks.
    per_sample: ClassVar[bool] = False
    # Whether the scenario adds its L1 term l1_coeff·mean(codes) to the loss. Encoders whose
    # sparsity comes from elsewhere (TopK activations, an L0 penalty, a gate penalty) set False;
    # the term is still computed and logged as loss/l1.
    l1_penalty: ClassVar[bool] = True
    # Whether ``fast_step`` is implemented; the loop uses it for reconstruction losses unless
    # ``encoder.fast_step=false``.
    has_fast_step: ClassVar[bool] = False
    # Whether its training step (hand-written or autograd) can be recorded as a CUDA graph
    # (sparsegap/accel/graph.py): no host synchronisation, no host values that change per step.
    capturable: ClassVar[bool] = False
    # The pyproject extra whose packages the encoder imports (sparsegap.extras.EXTRAS), if any:
    # the entry point checks it before anything runs.
    extra: ClassVar[str | None] = None

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        dim: int,
        latents: int,
        generators: Sequence[torch.Generator],
        train_samples: int,
        l1_coeff: float,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim, self.latents, self.replicas = dim, latents, len(generators)
        self._kept: tuple[Tensor, Tensor] | None = None  # see _keep

    def _keep(self, codes: Tensor, intermediate: Tensor) -> Tensor:
        """Remember an intermediate of the forward pass that produced ``codes`` (returned), so
        ``auxiliary_losses`` need not recompute it (see ``_kept_for``)."""
        self._kept = (codes, intermediate)
        return codes

    def _kept_for(self, codes: Tensor, recompute: Callable[[], Tensor]) -> Tensor:
        """The intermediate kept with these very codes (taken once, so the graph is freed), or
        ``recompute()`` when the codes came from elsewhere (e.g. ``infer``)."""
        kept, self._kept = self._kept, None
        return kept[1] if kept is not None and kept[0] is codes else recompute()

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """The encoder's own value checks on the whole config (``cfg.encoder`` holds its fields),
        raising ``ConfigError``. Run by validation, and again once ``data=lm`` knows the number
        of latents. None by default."""

    @classmethod
    def resolve(cls, cfg: DictConfig) -> None:
        """Fill in, on synthetic data, the encoder's defaults that depend on other keys (e.g. a
        budget that defaults to data.K), so the logged config shows real values. None by
        default."""

    @classmethod
    def describe(cls, encoder: Mapping[str, Any]) -> str:
        """Display name of a configured method: ``label`` unless some of the encoder's fields
        (a partial ``encoder`` mapping, as the report recovers it from a label) matter."""
        return cls.label

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training-time codes (R, L, B) for x (M, B); ``index`` selects training samples for
        encoders that store per-sample state (sparse coding)."""
        raise NotImplementedError

    @torch.no_grad()
    def infer(self, x: Tensor, atoms: Tensor) -> Tensor:
        """Codes for unseen samples given the current dictionary (R, M, L). Amortised encoders
        simply run their forward pass."""
        return self.forward(x)

    def auxiliary_losses(self, x: Tensor, codes: Tensor, atoms: Tensor | None) -> dict[str, Tensor]:
        """Extra loss terms for codes = self(x) (or self.infer(x, atoms)), each per replica (R,)
        and already weighted; the scenario adds them to the total and logs them as
        ``loss/<name>``. ``atoms`` is the decoder (R, M, L), None when the scenario has none."""
        return {}

    def auxiliary_flops(self, samples: int, decoder: Decoder | None) -> Flops:
        """FLOPs of ``auxiliary_losses`` forward and backward in one training step, per replica
        (``decoder``: the scenario's, None when it has none)."""
        return Flops()

    def state_metrics(self) -> dict[str, Tensor]:
        """Per-replica (R,) values of the encoder's own training state, logged under their names
        with every evaluation (e.g. how many latents AuxK counts dead). None by default."""
        return {}

    def fast_step(
        self,
        x: Tensor,
        atoms: Tensor,
        l1_coeff: float | Tensor,
        atoms_grad: bool,
        losses: bool = True,
    ) -> HandStep:
        """Forward and hand-written backward of mse + l1_coeff·mean(codes) against ``atoms``
        (R, M, L), with no autograd graph (at the paper's size a step costs more in per-kernel
        overhead than in arithmetic). Sets the encoder parameters' ``.grad`` exactly as autograd
        would and returns per replica (mse, mean(codes)) (None, None unless ``losses``), the codes
        and the atoms' gradient (None unless ``atoms_grad``). x and atoms arrive in the dtype the
        matmuls run in (bfloat16 under ``device.autocast=bf16``); gradients are stored in the
        parameters' dtype."""
        raise NotImplementedError(f"encoder {self.name} has no hand-written step")

    def fused_step(self, decoder: Decoder, optimiser: Adam, low: torch.dtype) -> FusedStep | None:
        """``fast_step`` and ``optimiser``'s Adam update (on its own moments and step counts) as
        fused kernels with matmuls in ``low``, keeping a normalised ``decoder`` at unit norm
        itself; None (the default) where this encoder has none for its device, so the loop
        takes ``fast_step``. Asked once per run, only where ``fast_step`` applies and only under
        ``device.autocast=bf16``."""
        return None

    def train_step(self, x: Tensor, decoder: Decoder | None) -> bool:
        """Hook for encoders trained without gradients (classical dictionary learning): one
        training step on the full training set x (M, B), updating ``decoder`` in place. Returns
        True when it did the whole step, so the loop skips its Adam step; the default (False)
        leaves training to the loop."""
        return False

    def train_step_flops(self, samples: int) -> Flops | None:
        """FLOPs of one ``train_step`` per replica when the encoder trains itself; None (the
        default) lets the loop count forward, backward, loss and Adam."""
        return None

    def needs_training(self, decoder_learned: bool) -> bool:
        """Whether training steps do anything useful for the test-time codes."""
        return True

    def forward_flops(self, samples: int) -> Flops:
        raise NotImplementedError

    def backward_flops(self, samples: int) -> Flops:
        raise NotImplementedError

    def infer_flops(self, samples: int) -> Flops:
        return self.forward_flops(samples)

    def parameters_per_replica(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) // self.replicas


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: add an encoder to the registry, checking its declarations."""
    for attribute in ("name", "config", "label"):
        if not hasattr(cls, attribute):
            raise TypeError(f"encoder {cls.__name__} declares no {attribute!r}")
    if cls.config.name != cls.name:
        raise TypeError(f"encoder {cls.name!r}: its config's name is {cls.config.name!r}")
    if cls.kind not in KINDS:
        raise TypeError(f"encoder {cls.name!r}: kind {cls.kind!r} is not one of {KINDS}")
    unknown = set(cls.scenarios) - set(SCENARIO_NAMES)
    if unknown:
        raise TypeError(f"encoder {cls.name!r}: unknown scenarios {sorted(unknown)}")
    ENCODERS[cls.name] = cls
    return cls


def check_budget(cfg: DictConfig, key: str, k: int | None) -> None:
    """An atom/latent budget (``encoder.k``, ``encoder.inference.k``): between 1 and the number
    of latents; null means data.K, which activations do not have."""
    if k is None and is_lm(cfg):
        raise ConfigError(f"{key}=None is invalid: data=lm has no data.K to default to; set {key}")
    if k is None:
        k, key = cfg.data.K, f"{key} (null = data.K)"
    latents = latents_of(cfg)
    if latents is None:
        need(k >= 1, key, k, "must be at least 1")
    else:
        allowed = f"must be between 1 and the number of latents ({latents}), or null"
        need(1 <= k <= latents, key, k, allowed)


def check_inference(cfg: DictConfig) -> None:
    """``encoder.inference`` of an encoder that infers codes at test time: the algorithm's
    common fields, its own checks, and its atom budget where it needs one."""
    inf = cfg.encoder.inference
    choice("encoder.inference.name", inf.name, tuple(INFERENCE))
    algorithm = INFERENCE[inf.name]
    algorithm.check(inf, "encoder.inference")
    if inf.k is not None or (is_lm(cfg) and algorithm.needs_budget):
        check_budget(cfg, "encoder.inference.k", inf.k)


def resolve_inference(cfg: DictConfig) -> None:
    """The inference's atom budget defaults to data.K (only the budgeted algorithms read it)."""
    if cfg.encoder.inference.k is None:
        cfg.encoder.inference.k = cfg.data.K


class InferenceEncoder:
    """Mixin of the encoders whose test codes come from ``encoder.inference`` (sparse coding,
    SAE + ITO, dictionary learning): the algorithm's checks, its budget's default and its name.
    Put it before ``Encoder`` (or an encoder) in the bases; an encoder with checks of its own
    calls ``super().check(cfg)``."""

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        check_inference(cfg)

    @classmethod
    def resolve(cls, cfg: DictConfig) -> None:
        resolve_inference(cfg)

    @staticmethod
    def inference_label(encoder: Mapping[str, Any]) -> str:
        """The display name of a configured encoder's inference algorithm."""
        return INFERENCE[encoder["inference"]["name"]].label
