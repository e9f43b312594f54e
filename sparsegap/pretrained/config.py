"""The schema of ``python -m sparsegap.pretrained`` (a structured config: no YAML needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsegap.config import LMDataConfig, LoggerConfig

METHODS = ("refit", "fista", "omp", "ito")


@dataclass
class SAESourceConfig:
    """Which SAE: a local folder (``path``) or a SAELens release and id (network, sae-lens)."""

    path: str | None = None  # SAELens / sparsify folder or a sparsegap data=lm run folder
    format: str = "auto"  # auto | saelens | sparsify | sparsegap
    release: str | None = None  # SAELens release name, loaded with SAELens's own loader
    id: str | None = None  # SAELens sae_id within the release
    replica: int = 0  # sparsegap runs: which replica
    scaling_factor: float | None = None  # fold a constant input scale (expected_average_only_in)


@dataclass
class PretrainedDataConfig(LMDataConfig):
    """Where the measured activations come from (the activation pipeline's keys)."""

    model: str | None = None  # null = the SAE's own model (its config); a hub name otherwise
    hook: str | None = None  # null = the SAE's own hook point
    tokens: int = 4096  # held-out activation tokens measured (whole contexts, at least this many)
    model_batch: int = 16  # contexts per model forward


@dataclass
class GapConfig:
    """What is measured and with which budgets."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # refit fista omp ito
    batch_tokens: int = 1024  # tokens per inference call (memory bound)
    fista_iterations: int = 300  # FISTA iterations per call
    ito_iterations: int = 300  # Adam-on-log-codes iterations (warm-started from the encoder)
    ito_lr: float = 3e-3  # its step size
    ito_prune: float = 1e-3  # ITO codes below this × the encoder's mean active code count as 0
    search_steps: int = 14  # bisection steps of FISTA's L1 weight to match the encoder's L0
    search_tokens: int = 1024  # tokens the bisection runs on (the first measured ones)
    curve: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # budget multipliers
    lm_contexts: int = 16  # contexts for the downstream LM loss; 0 = skip it


@dataclass
class PretrainedConfig:
    sae: SAESourceConfig = field(default_factory=SAESourceConfig)
    data: PretrainedDataConfig = field(default_factory=PretrainedDataConfig)
    gap: GapConfig = field(default_factory=GapConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    device: str = "cpu"  # cpu | cuda | auto
    seed: int = 0
    progress: bool = True  # a progress bar per stage (stderr)
