"""Typed configuration schemas and the cross-field checks that run before any training.

Every option of the framework is a field below; its docstring line is the documentation. The YAML
files in ``conf/`` are thin presets over these schemas (Hydra validates types and unknown keys
against them). ``validate`` adds the checks a type cannot express (ranges, names, scenario/encoder
pairs, device availability) and raises ``ConfigError`` with the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""


MAGNITUDES = ("abs_normal", "normal", "exponential", "uniform")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOGGER_MODES = ("offline", "online", "disabled")
DICTIONARY_SIMILARITIES = ("pearson", "cosine")
ITO_INITS = ("sae", "scratch")


@dataclass
class DataConfig:
    """Synthetic data X = D·S + noise (paper §3.2), one column per sample."""

    N: int = 16  # number of true sparse sources (dictionary atoms)
    M: int = 8  # number of measurements (dimension of X)
    K: int = 3  # active sources per sample, support drawn uniformly without replacement
    train_samples: int = 1024
    test_samples: int = 1024
    magnitude: str = (
        "abs_normal"  # law of the active values: abs_normal | normal | exponential | uniform
    )
    noise_std: float = 0.0  # standard deviation of additive Gaussian noise on X
    seed: int = 0  # data seed; the replicas share the data and differ only in initialisation


@dataclass
class InferenceConfig:
    """Iterative sparse inference used at test time (sparse coding, SAE+ITO)."""

    name: str = "adam_log"  # algorithm from sparsegap.inference
    iterations: int = 10_000  # iterations per inference call
    lr: float = 3e-3  # step size of the optimiser
    l1_coeff: float | None = None  # L1 weight of the inference objective; null = top-level l1_coeff
    init_log: float = -10.0  # log-parametrised codes start at exp(init_log) when not warm-started
    k: int | None = None  # atom budget of mp, omp and gp; null = data.K (passed by the encoder)
    nonnegative: bool = True  # ista, fista and the pursuits: constrain codes to S >= 0
    restart: bool = True  # fista: adaptive (gradient) restart of the momentum, per sample
    tolerance: float = 0.0  # stop once the relative change of the codes falls below it; 0 = never


@dataclass
class EncoderConfig:
    """Fields shared by every encoder."""

    name: str = MISSING  # registry name, see sparsegap.encoders
    latents: int | None = None  # number of learned latents; null = data.N
    bias: bool = False  # add biases to the encoder layers (App. E: no significant effect)
    normalise_decoder: bool = True  # keep learned decoder atoms at unit norm (paper §3.3)


@dataclass
class SAEConfig(EncoderConfig):
    """Sparse autoencoder: codes = ReLU(W·x [+ b])."""

    name: str = "sae"


@dataclass
class MLPConfig(EncoderConfig):
    """One-hidden-layer MLP encoder: codes = ReLU(W2·ReLU(W1·x [+ b1]) [+ b2])."""

    name: str = "mlp"
    hidden: int = 32  # hidden width (paper: 32, 256; 1,024 for known codes)


@dataclass
class SparseCodingConfig(EncoderConfig):
    """Free non-negative codes per training sample (S = exp(log S)) learned jointly with the
    dictionary; codes for test samples are inferred by iterative optimisation."""

    name: str = "sparse_coding"
    init_log: float = -10.0  # training log-codes start here (the authors' value)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class SAEITOConfig(EncoderConfig):
    """SAE whose test codes are refined by inference-time optimisation against its decoder."""

    name: str = "sae_ito"
    init: str = "sae"  # start inference from the SAE's codes (sae) or from exp(init_log) (scratch)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class ScenarioConfig:
    """What is known, what is learned, and the loss (paper §3.5)."""

    name: str = MISSING  # known_codes | known_dictionary | unknown
    steps: int = 40_000  # the paper's number of training steps for this scenario


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | mps
    threads: int | None = None  # torch intra-op threads on CPU; null = torch's default


@dataclass
class LoggerConfig:
    """Experiment tracking. metrics.jsonl and summary.json are always written."""

    name: str = "wandb"  # wandb | none
    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline (default) | online | disabled
    project: str = "sparsegap"
    entity: str | None = None
    group: str | None = None  # null = the multirun's sweep folder name (single runs: no group)
    tags: list[str] = field(default_factory=list)


@dataclass
class MetricsConfig:
    dictionary_similarity: str = "pearson"  # pearson (authors' code) | cosine (|cos|, as SAELens)


@dataclass
class Config:
    """Top level of ``python -m sparsegap``."""

    data: Any = MISSING
    encoder: Any = MISSING
    scenario: Any = MISSING
    device: Any = MISSING
    logger: Any = MISSING
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 0  # model initialisation seed; replica i is initialised with seed + i
    replicas: int = 5  # independently initialised models trained together on the same data
    steps: int = II("scenario.steps")  # training steps (default: the scenario's paper value)
    eval_every: int = 500  # evaluate every this many steps (plus step 0 and the last step)
    lr: float = 1e-3  # Adam learning rate
    l1_coeff: float = 0.01  # weight of mean|codes| in the loss
    progress: bool = True  # progress bar (only shown when stdout is a terminal)
    compile: bool = False  # torch.compile the training step (worth it for long GPU runs)


def register_configs() -> None:
    """Register the schemas; group YAML files extend them via ``defaults: [<name>_schema]``."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    for node in (SAEConfig, MLPConfig, SparseCodingConfig, SAEITOConfig):
        cs.store(group="encoder", name=f"{node.name}_schema", node=node)
    cs.store(group="scenario", name="scenario_schema", node=ScenarioConfig)
    cs.store(group="device", name="device_schema", node=DeviceConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def _need(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    _need(value in allowed, key, value, f"allowed values are {', '.join(allowed)}")


def latents_of(cfg: DictConfig) -> int:
    """Number of latents the encoder learns (``encoder.latents``, default ``data.N``)."""
    return cfg.encoder.latents if cfg.encoder.latents is not None else cfg.data.N


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validate(cfg: DictConfig) -> None:
    """Check everything Hydra's type checks cannot, before any data is generated."""
    from sparsegap.encoders import ENCODERS
    from sparsegap.inference import INFERENCE
    from sparsegap.scenarios import SCENARIOS

    d = cfg.data
    _need(d.N >= 1, "data.N", d.N, "must be at least 1")
    _need(d.M >= 1, "data.M", d.M, "must be at least 1")
    _need(1 <= d.K <= d.N, "data.K", d.K, f"must be between 1 and data.N={d.N}")
    _need(d.train_samples >= 2, "data.train_samples", d.train_samples, "must be at least 2")
    _need(d.test_samples >= 2, "data.test_samples", d.test_samples, "must be at least 2")
    _choice("data.magnitude", d.magnitude, MAGNITUDES)
    _need(d.noise_std >= 0, "data.noise_std", d.noise_std, "must be non-negative")

    e = cfg.encoder
    _choice("encoder.name", e.name, tuple(ENCODERS))
    if e.latents is not None:
        _need(e.latents >= 1, "encoder.latents", e.latents, "must be at least 1 (or null = data.N)")
    if "hidden" in e:
        _need(e.hidden >= 1, "encoder.hidden", e.hidden, "must be at least 1")
    if "init" in e:
        _choice("encoder.init", e.init, ITO_INITS)
    if "inference" in e:
        inf = e.inference
        _choice("encoder.inference.name", inf.name, tuple(INFERENCE))
        _need(inf.iterations >= 0, "encoder.inference.iterations", inf.iterations, "must be >= 0")
        _need(inf.lr > 0, "encoder.inference.lr", inf.lr, "must be positive")
        if inf.k is not None:
            allowed = f"must be between 1 and the number of latents ({latents_of(cfg)}), or null"
            _need(1 <= inf.k <= latents_of(cfg), "encoder.inference.k", inf.k, allowed)
        if inf.l1_coeff is not None:
            _need(inf.l1_coeff >= 0, "encoder.inference.l1_coeff", inf.l1_coeff, "must be >= 0")

    _choice("scenario.name", cfg.scenario.name, tuple(SCENARIOS))
    scenario = SCENARIOS[cfg.scenario.name]
    if e.name not in scenario.encoders:
        raise ConfigError(
            f"encoder={e.name} does not apply to scenario={cfg.scenario.name}: {scenario.why_not}"
            f" Encoders for this scenario: {', '.join(scenario.encoders)}."
        )
    if scenario.needs_matching_latents and latents_of(cfg) != d.N:
        raise ConfigError(
            f"encoder.latents={e.latents} is invalid for scenario={cfg.scenario.name}: its codes"
            f" are tied to the true sources, so it needs data.N={d.N} latents (or null)"
        )

    _need(cfg.steps >= 0, "steps", cfg.steps, "must be >= 0")
    _need(cfg.replicas >= 1, "replicas", cfg.replicas, "must be at least 1")
    _need(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "must be at least 1")
    _need(cfg.lr > 0, "lr", cfg.lr, "must be positive")
    _need(cfg.l1_coeff >= 0, "l1_coeff", cfg.l1_coeff, "must be >= 0")
    _choice(
        "metrics.dictionary_similarity", cfg.metrics.dictionary_similarity, DICTIONARY_SIMILARITIES
    )

    _choice("device.name", cfg.device.name, DEVICES)
    if cfg.device.name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda is invalid: no CUDA GPU is visible here; use device=cpu or auto"
        )
    if cfg.device.name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device=mps is invalid: MPS is not available here; use device=cpu or auto"
        )
    if cfg.device.threads is not None:
        _need(cfg.device.threads >= 1, "device.threads", cfg.device.threads, "must be at least 1")

    _choice("logger.name", cfg.logger.name, ("wandb", "none"))
    if cfg.logger.name == "wandb":
        _choice("logger.mode", cfg.logger.mode, LOGGER_MODES)


def fill_defaults(cfg: DictConfig) -> None:
    """Resolve the defaults that depend on other keys, so the logged config shows real values:
    a pursuit algorithm's atom budget ``encoder.inference.k`` defaults to ``data.K``."""
    if "inference" in cfg.encoder and cfg.encoder.inference.k is None:
        cfg.encoder.inference.k = cfg.data.K


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (what W&B and summary.json store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
