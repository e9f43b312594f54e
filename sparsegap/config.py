"""Typed configuration schemas: every option of the framework that is not a method's own.

Each field's comment is its documentation (with its range where it has one). The YAML files in
``conf/`` are thin presets over these schemas, and Hydra checks types and unknown keys against
them. Each encoder's and inference algorithm's own fields live with the method
(``sparsegap/encoders/*.py``, ``sparsegap/inference/*.py``), the base classes here; the checks a
type cannot express are in ``sparsegap/validate.py`` and in each method's ``check``. This module
is the bottom of the import graph: it imports nothing from the package but its error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING, DictConfig, OmegaConf

from sparsegap.errors import ConfigError

__all__ = ["ConfigError"]  # re-exported: the error every configuration check raises

MAGNITUDES = ("abs_normal", "normal", "exponential", "uniform")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOGGER_MODES = ("offline", "online", "disabled")
LOGGERS = ("wandb", "none")
DICTIONARY_SIMILARITIES = ("pearson", "cosine")
SUPPORTS = ("fixed_k", "bernoulli")
DATA_DRAWS = ("sparsegap", "authors")
INIT_SCHEMES = ("sparsegap", "authors")
FREQUENCIES = ("uniform", "zipf")
IMPORTANCES = ("none", "decay")
COSINE_AXES = ("latent", "sample")  # scenario.cosine: what one cosine similarity runs over
DATA_DICTIONARIES = ("gaussian", "orthogonal", "coherent")
COHERENCE_KINDS = ("mean", "max")
DATA_SOURCES = ("synthetic", "lm")
MODEL_DTYPES = ("float32", "bfloat16", "float16")
AUTOCASTS = ("none", "bf16")


@dataclass
class DataConfig:
    """Synthetic data X = D·S + noise (paper §3.2), one column per sample. ``data=default`` is
    the paper's default regime: N=16 sources, M=8 measurements, K=3 active, 1,024 + 1,024
    samples; conf/data/medium.yaml and hard.yaml are harder regimes."""

    source: str = "synthetic"  # synthetic | lm (language-model activations, conf/data/lm.yaml)
    N: int = 16  # number of true sparse sources (dictionary atoms)
    M: int = 8  # number of measurements (dimension of X)
    K: int = 3  # active sources per sample (fixed_k: exactly, uniformly; bernoulli: expected L0)
    train_samples: int = 1024  # training samples (columns of X); the paper: 1,024
    test_samples: int = 1024  # held-out samples the test metrics are computed on
    # > 0: train on batches of this many samples drawn on the fly (data.train_samples per epoch,
    # the same batches every epoch), never holding the training set; 0 = the paper's full batch.
    stream_batch: int = 0
    magnitude: str = (
        "abs_normal"  # law of the active values: abs_normal | normal | exponential | uniform
    )
    noise_std: float = 0.0  # standard deviation of additive Gaussian noise on X
    seed: int = 0  # data seed; the replicas share the data and differ only in initialisation
    # sparsegap (one torch generator, every law below) | authors (the authors' generator draw for
    # draw: their NumPy and torch calls in their order, paper law only; sparsegap/data/authors.py)
    draw: str = "sparsegap"
    # Laws beyond the paper's (see sparsegap/data/laws.py, magnitudes.py, dictionaries.py):
    support: str = "fixed_k"  # fixed_k (exactly K, uniformly) | bernoulli (independent, E[L0]=K)
    frequencies: str = "uniform"  # bernoulli firing probabilities p_i: uniform | zipf, Σp_i = K
    zipf_exponent: float = 1.0  # frequencies=zipf: p_i ∝ (i+1)^-zipf_exponent
    magnitude_mean: float | None = None  # mean of the active values; null = the law's own
    magnitude_std: float | None = None  # std of the active values; null = the law's own
    magnitude_heterogeneity: float = 0.0  # η: feature i's values × exp(η·N(0,1) − η²/2); 0 = none
    importance: str = "none"  # feature importance weights: none (ones) | decay (importance_decay^i)
    importance_decay: float = 0.9  # r of importance=decay: weight_i = r^i (Elhage et al. 2022)
    correlation_rank: int = 0  # Gaussian-copula factors; feature i loads on factor i mod rank
    correlation_scale: float = 0.0  # latent correlation of features sharing a factor; 0 = none
    hierarchy_depth: int = 0  # child levels under each root (trees of 1+b+…+b^depth); 0 = flat
    hierarchy_branching: int = 2  # b: children per parent
    hierarchy_exclusive: bool = False  # siblings never fire together (lowest index wins)
    dictionary: str = "gaussian"  # gaussian | orthogonal (needs N <= M) | coherent
    coherence_target: float = 0.3  # dictionary=coherent: target off-diagonal |cosine|
    coherence_kind: str = "mean"  # dictionary=coherent: target the mean or the max |cosine|
    snr_db: float | None = (
        None  # SNR of X in dB (noise std from the signal power); null = noise_std
    )


@dataclass
class LMDataConfig:
    """Activations of a language model (paper §5: GPT-2 small, layer 9, OpenWebText): text →
    contexts of ``context`` tokens → the model up to ``hook`` → a shuffling buffer → column
    batches (d_model, batch_tokens). The stream's first ``test_tokens`` activations are the
    evaluation set; the next ``tokens`` are trained on, each once. ``data=lm``: GPT-2 small, the
    residual stream before block 9, OpenWebText streamed, 100 M training tokens."""

    source: str = "lm"  # lm: activations of a language model (data=lm sets it)
    model: str = "gpt2"  # Hugging Face hub name of the transformer
    model_path: str | None = None  # local save_pretrained folder, used instead of the hub
    hook: str = "blocks.9.hook_resid_pre"  # transformer-lens hook point whose output is X
    dtype: str = "float32"  # model weights: float32 | bfloat16 | float16
    model_device: str | None = None  # device of the model forward; null = device.name
    model_batch: int = 32  # contexts per model forward
    dataset: str = "Skylion007/openwebtext"  # Hugging Face datasets name, streamed
    dataset_split: str = "train"  # split of data.dataset to stream
    text_column: str = "text"  # the text field of the dataset's rows and of JSONL files
    text_files: str | None = None  # glob of local .txt (one document per line) or .jsonl files
    context: int = 128  # tokens per context, BOS included
    prepend_bos: bool = True  # start every context with the BOS token
    exclude_special: bool = True  # drop BOS/EOS/pad positions (GPT-2's BOS norm is an outlier)
    tokens: int | None = None  # training tokens; null = 100 M from a model, all of data.cache
    test_tokens: int = 16_384  # held-out evaluation tokens: the stream's first
    batch_tokens: int = 4096  # tokens per training step
    shuffle_tokens: int = 262_144  # shuffling buffer capacity in tokens; 0 = stream order
    seed: int = 0  # shuffling seed
    prefetch: bool = True  # harvest the next activations in a background thread
    cache: str | None = None  # train from this activation cache (+cache=build) instead
    normalise: bool = False  # scale X so that its mean squared norm is d (factor: test tokens)
    expansion: int = 32  # latents = expansion × d when encoder.latents is null
    dim: int | None = None  # d, filled in from the model or the cache
    input_scale: float | None = None  # the normalise factor, filled in (1 when normalise=false)


@dataclass
class CacheConfig:
    """``+cache=build``: harvest the ``data=lm`` activations to disk (``cache.dir``) instead of
    training; then train any number of encoders on them with ``data.cache=<cache.dir>``."""

    dir: str | None = None  # output folder; null = outputs/act-cache/<model>-<hook>
    dtype: str = "float32"  # stored dtype: float32 (exact) | bfloat16 | float16 (half the disk)
    flush_tokens: int = 1_048_576  # tokens between flushes of the manifest (the resume points)


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
class HandStepConfig:
    """Mixed into the configs of encoders that implement ``Encoder.fast_step``."""

    # Hand-written forward and backward (no autograd graph) where the loss is a reconstruction
    # (unknown, known_dictionary); the same step as autograd to rounding. false = autograd.
    fast_step: bool = True


@dataclass
class ScenarioConfig:
    """What is known, what is learned, and the loss (paper §3.5; sparsegap/scenarios.py):
    ``known_codes`` (regress the true codes, §4.1), ``known_dictionary`` (decoder frozen at the
    true dictionary, §4.2), ``unknown`` (both learned, §4.3)."""

    name: str = MISSING  # known_codes | known_dictionary | unknown
    # The paper's number of training steps for this scenario (scenario=<name> sets it: 20,000
    # for the known cases, 40,000 for unknown).
    steps: int = 40_000
    # known_codes: the cosine similarity is taken per latent over the batch's samples (latent,
    # as REFERENCE.md describes the authors' code) or per sample across the latents (sample,
    # F.cosine_similarity's default axis on samples-as-rows codes). docs/RESULTS.md compares them.
    cosine: str = "latent"


@dataclass
class DeviceConfig:
    """Where the run computes: ``device=auto`` (the default), ``cpu``, ``cuda`` or ``mps``."""

    name: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | mps
    threads: int | None = None  # torch intra-op threads on CPU; null = torch's default
    autocast: str = "none"  # none | bf16: the training step's matmuls in bfloat16
    tf32: bool = False  # CUDA: TF32 tensor cores for float32 matmuls
    pin_memory: bool = True  # CUDA: host→device copies of batches from pinned memory


@dataclass
class LoggerConfig:
    """Experiment tracking. metrics.jsonl and summary.json are always written."""

    # wandb: Weights & Biases, offline by default (no account needed; `wandb sync` uploads
    # later); logger.mode=online streams live. none: no W&B run.
    name: str = "wandb"
    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline (default) | online | disabled
    project: str = "sparsegap"  # W&B project
    entity: str | None = None  # W&B entity (user or team); null = your default
    group: str | None = None  # null = the multirun's sweep folder name (single runs: no group)
    tags: list[str] = field(default_factory=list)  # extra W&B tags


@dataclass
class MetricsConfig:
    dictionary_similarity: str = "pearson"  # pearson (authors' code) | cosine (|cos|, as SAELens)
    dead_window: int = 10_000_000  # data=lm: a latent is dead when silent for this many tokens


@dataclass
class Config:
    """Top level of ``python -m sparsegap``."""

    data: Any = MISSING
    encoder: Any = MISSING
    scenario: Any = MISSING
    device: Any = MISSING
    logger: Any = MISSING
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cache: Any = None  # +cache=build: harvest activations to disk instead of training
    seed: int = 0  # model initialisation seed; replica i is initialised with seed + i
    # sparsegap (seed + i keyed away from the data stream) | authors (torch.manual_seed(seed + i +
    # 42) then nn.Linear's default initialisation, as the authors' models; encoders/layers.py)
    init: str = "sparsegap"
    replicas: int = 5  # independently initialised models trained together on the same data
    steps: int = II("scenario.steps")  # training steps (default: the scenario's paper value)
    eval_every: int = 500  # evaluate every this many steps (plus step 0 and the last step)
    lr: float = 1e-3  # Adam learning rate
    l1_coeff: float = 0.01  # weight of mean|codes| in the loss
    progress: bool = True  # progress bar (only shown when stdout is a terminal)
    compile: bool = False  # torch.compile the training step (worth it for long GPU runs)
    lr_warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps
    l1_warmup_steps: int = 0  # linear l1_coeff warm-up from 0 over this many steps
    checkpoint_every: int | None = None  # data=lm: tokens between checkpoints; null = at the end
    resume: bool = False  # data=lm: continue the newest run with this config from its checkpoint
    # A run whose output folder already holds a completed run of this config (summary.json,
    # model) is not run again: an interrupted multirun (make paper) continues where it stopped.
    skip_completed: bool = False


def latents_of(cfg: DictConfig) -> int | None:
    """Number of latents the encoder learns: ``encoder.latents``, default ``data.N``
    (synthetic) or ``data.expansion × data.dim`` (activations; None while d is unknown)."""
    if cfg.encoder.latents is not None:
        return cfg.encoder.latents
    if is_lm(cfg):
        return None if cfg.data.dim is None else cfg.data.expansion * cfg.data.dim
    return cfg.data.N


def is_lm(cfg: DictConfig) -> bool:
    """Whether the run trains on language-model activations (``data=lm``)."""
    return cfg.data.source == "lm"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (what W&B and summary.json store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
