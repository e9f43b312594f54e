"""Typed configuration schemas: every option of the framework that is not a method's own.

Each field's comment is its documentation (with its range where it has one). The YAML files in
``conf/`` are thin presets over these schemas, and Hydra checks types and unknown keys against
them. Each encoder's and inference algorithm's own fields live with the method
(``sparsegap/encoders/*.py``, ``sparsegap/inference/*.py``), the base classes here; the checks a
type cannot express are in ``sparsegap/validate.py`` and in each method's ``check``. This module
is the bottom of the import graph: it imports nothing from the package but its error.
"""

from __future__ import annotations

import math
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
GRAPH_MODES = ("auto", "on", "off")

# Integers end up in torch tensors and generators, which hold 64 bits: larger ones overflow there
# (a traceback deep in a run) instead of failing here.
INT64_MAX = 2**63 - 1
# Seeds reach NumPy's RandomState (32 bits) as seed + replica + small offsets: 31 bits leave room.
SEED_MAX = 2**31 - 1


# A bound of a numeric field: a number, or the name of a sibling field whose value bounds it.
Bound = float | str | None


@dataclass(frozen=True)
class Range:
    """The values a numeric field admits: bounds (``ge``/``gt`` below, ``le``/``lt`` above; None =
    none but the 64-bit limit of integers) and whether NaN and ±inf mean something."""

    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None
    nonfinite: bool = False

    def problem(self, value: float, siblings: Any = None, prefix: str = "") -> str | None:
        """Why ``value`` is outside the range, as the end of an error message ("must be ..."),
        or None when it is inside. ``siblings``: the mapping holding the field (its keys
        ``prefix``ed), where a bound names a sibling."""
        ge, gt, le, lt = (
            _resolve(b, siblings, prefix) for b in (self.ge, self.gt, self.le, self.lt)
        )
        low, high = ge or gt, le or lt
        if isinstance(value, float) and not math.isfinite(value):
            if self.nonfinite:
                return None
            if low is None and high is None:
                return "must be a finite number"
            return f"{_describe(ge, gt, le, lt)} (a finite number)"
        if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
            if high is not None:
                return _describe(ge, gt, le, lt)
            return f"{_describe(ge, gt, le, lt)} and at most {INT64_MAX} (a 64-bit integer)"
        inside = not (
            (ge is not None and value < ge[0])
            or (gt is not None and value <= gt[0])
            or (le is not None and value > le[0])
            or (lt is not None and value >= lt[0])
        )
        return None if inside else _describe(ge, gt, le, lt)


# A resolved bound: its value and how a message names it ("1", "data.N=16").
_Resolved = tuple[float, str] | None


def _resolve(bound: Bound, siblings: Any, prefix: str) -> _Resolved:
    if bound is None:
        return None
    if isinstance(bound, str):
        value = siblings[bound]
        return value, f"{prefix}{bound}={value}"
    return bound, str(int(bound)) if float(bound).is_integer() else str(bound)


def _describe(ge: _Resolved, gt: _Resolved, le: _Resolved, lt: _Resolved) -> str:
    """A range in words: "must be at least 1", "must be in (0, 1]", ..."""
    low, high = ge or gt, le or lt
    if low is None and high is None:
        return "may be any number"
    if high is None:
        assert low is not None
        if low[0] == 0:  # the usual words for the usual bound
            return "must be >= 0" if ge else "must be positive"
        return f"must be {'at least' if ge else 'greater than'} {low[1]}"
    if low is None:
        return f"must be {'at most' if le else 'less than'} {high[1]}"
    if ge and le:
        return f"must be between {low[1]} and {high[1]}"
    return f"must be in {'[' if ge else '('}{low[1]}, {high[1]}{']' if le else ')'}"


def ranged(
    default: Any,
    *,
    ge: Bound = None,
    gt: Bound = None,
    le: Bound = None,
    lt: Bound = None,
    nonfinite: bool = False,
) -> Any:
    """A numeric dataclass field with ``default`` and the range its values must lie in (null
    stays allowed where the type is optional): ``ge``/``gt`` the lower bound, inclusive or not,
    ``le``/``lt`` the upper one, each a number or the name of a sibling field (``K: int =
    ranged(3, ge=1, le="N")``); ``nonfinite=True`` where NaN and ±inf mean something."""
    bounds = Range(ge=ge, gt=gt, le=le, lt=lt, nonfinite=nonfinite)
    return field(default=default, metadata={"range": bounds})


def range_of(spec: Any) -> Range:
    """The range a dataclass field declares (``ranged``); an undeclared one admits every finite
    number (and every 64-bit integer)."""
    return spec.metadata.get("range", Range())


@dataclass
class DataConfig:
    """Synthetic data X = D·S + noise (paper §3.2), one column per sample. ``data=default`` is
    the paper's default regime: N=16 sources, M=8 measurements, K=3 active, 1,024 + 1,024
    samples; conf/data/medium.yaml and hard.yaml are harder regimes."""

    source: str = "synthetic"  # synthetic | lm (language-model activations, conf/data/lm.yaml)
    N: int = ranged(16, ge=1)  # number of true sparse sources (dictionary atoms)
    M: int = ranged(8, ge=1)  # number of measurements (dimension of X)
    # active sources per sample (fixed_k: exactly, uniformly; bernoulli: expected L0)
    K: int = ranged(3, ge=1, le="N")
    train_samples: int = ranged(1024, ge=2)  # training samples (columns of X); the paper: 1,024
    test_samples: int = ranged(1024, ge=2)  # held-out samples the test metrics are computed on
    # > 0: train on batches of this many samples drawn on the fly (data.train_samples per epoch,
    # the same batches every epoch), never holding the training set; 0 = the paper's full batch.
    stream_batch: int = ranged(0, ge=0)
    magnitude: str = (
        "abs_normal"  # law of the active values: abs_normal | normal | exponential | uniform
    )
    noise_std: float = ranged(0.0, ge=0)  # standard deviation of additive Gaussian noise on X
    # data seed; the replicas share the data and differ only in initialisation
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    # sparsegap (one torch generator, every law below) | authors (the authors' generator draw for
    # draw: their NumPy and torch calls in their order, paper law only; sparsegap/data/authors.py)
    draw: str = "sparsegap"
    # Laws beyond the paper's (see sparsegap/data/laws.py, magnitudes.py, dictionaries.py):
    support: str = "fixed_k"  # fixed_k (exactly K, uniformly) | bernoulli (independent, E[L0]=K)
    frequencies: str = "uniform"  # bernoulli firing probabilities p_i: uniform | zipf, Σp_i = K
    zipf_exponent: float = ranged(1.0, ge=0)  # frequencies=zipf: p_i ∝ (i+1)^-zipf_exponent
    magnitude_mean: float | None = ranged(None)  # mean of the active values; null = the law's own
    # std of the active values; null = the law's own
    magnitude_std: float | None = ranged(None, ge=0)
    # η: feature i's values × exp(η·N(0,1) − η²/2); 0 = none
    magnitude_heterogeneity: float = ranged(0.0, ge=0)
    importance: str = "none"  # feature importance weights: none (ones) | decay (importance_decay^i)
    # r of importance=decay: weight_i = r^i (Elhage et al. 2022)
    importance_decay: float = ranged(0.9, gt=0, le=1)
    # Gaussian-copula factors; feature i loads on factor i mod rank
    correlation_rank: int = ranged(0, ge=0, le="N")
    # latent correlation of features sharing a factor; 0 = none
    correlation_scale: float = ranged(0.0, ge=0, lt=1)
    # child levels under each root (trees of 1+b+…+b^depth); 0 = flat
    hierarchy_depth: int = ranged(0, ge=0)
    hierarchy_branching: int = ranged(2, ge=1)  # b: children per parent
    hierarchy_exclusive: bool = False  # siblings never fire together (lowest index wins)
    dictionary: str = "gaussian"  # gaussian | orthogonal (needs N <= M) | coherent
    # dictionary=coherent: target off-diagonal |cosine|
    coherence_target: float = ranged(0.3, gt=0, lt=1)
    coherence_kind: str = "mean"  # dictionary=coherent: target the mean or the max |cosine|
    snr_db: float | None = ranged(None)  # SNR of X in dB (noise std from it); null = noise_std


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
    model_batch: int = ranged(32, ge=1)  # contexts per model forward
    dataset: str = "Skylion007/openwebtext"  # Hugging Face datasets name, streamed
    dataset_split: str = "train"  # split of data.dataset to stream
    text_column: str = "text"  # the text field of the dataset's rows and of JSONL files
    text_files: str | None = None  # glob of local .txt (one document per line) or .jsonl files
    context: int = ranged(128, ge=2)  # tokens per context, BOS included
    prepend_bos: bool = True  # start every context with the BOS token
    exclude_special: bool = True  # drop BOS/EOS/pad positions (GPT-2's BOS norm is an outlier)
    # training tokens; null = 100 M from a model, all of data.cache
    tokens: int | None = ranged(None, ge=1)
    test_tokens: int = ranged(16_384, ge=2)  # held-out evaluation tokens: the stream's first
    batch_tokens: int = ranged(4096, ge=1)  # tokens per training step
    # shuffling buffer capacity in tokens; 0 = stream order
    shuffle_tokens: int = ranged(262_144, ge=0)
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # shuffling seed
    prefetch: bool = True  # harvest the next activations in a background thread
    cache: str | None = None  # train from this activation cache (+cache=build) instead
    normalise: bool = False  # scale X so that its mean squared norm is d (factor: test tokens)
    expansion: int = ranged(32, ge=1)  # latents = expansion × d when encoder.latents is null
    dim: int | None = ranged(None, ge=1)  # d, filled in from the model or the cache
    # the normalise factor, filled in (1 when normalise=false)
    input_scale: float | None = ranged(None, gt=0)


@dataclass
class CacheConfig:
    """``+cache=build``: harvest the ``data=lm`` activations to disk (``cache.dir``) instead of
    training; then train any number of encoders on them with ``data.cache=<cache.dir>``."""

    dir: str | None = None  # output folder; null = outputs/act-cache/<model>-<hook>
    dtype: str = "float32"  # stored dtype: float32 (exact) | bfloat16 | float16 (half the disk)
    # tokens between flushes of the manifest (the resume points)
    flush_tokens: int = ranged(1_048_576, ge=1)


@dataclass
class InferenceConfig:
    """Iterative sparse inference used at test time (sparse coding, SAE+ITO)."""

    name: str = "adam_log"  # algorithm from sparsegap.inference
    iterations: int = ranged(10_000, ge=0)  # iterations per inference call
    lr: float = ranged(3e-3, gt=0)  # step size of the optimiser
    # L1 weight of the inference objective; null = top-level l1_coeff
    l1_coeff: float | None = ranged(None, ge=0)
    # log-parametrised codes start at exp(init_log) when not warm-started
    init_log: float = ranged(-10.0)
    # atom budget of mp, omp, gp and best_subset; null = data.K (passed by the encoder)
    k: int | None = ranged(None, ge=1)
    # best_subset: FISTA's largest atoms whose subsets of at most k are searched; null = k + 2
    candidates: int | None = ranged(None, ge=1)
    # best_subset: an atom must lower the squared residual by this many noise variances
    penalty: float = ranged(4.0, ge=0)
    # best_subset: rounds of local search (exchanging one or two atoms) after the subsets; 0 = none
    swaps: int = ranged(4, ge=0)
    nonnegative: bool = True  # ista, fista and the pursuits: constrain codes to S >= 0
    restart: bool = True  # fista: adaptive (gradient) restart of the momentum, per sample
    # stop once the relative change of the codes falls below it; 0 = never
    tolerance: float = ranged(0.0, ge=0)


@dataclass
class EncoderConfig:
    """Fields shared by every encoder."""

    name: str = MISSING  # registry name, see sparsegap.encoders
    latents: int | None = ranged(None, ge=1)  # number of learned latents; null = data.N
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
    steps: int = ranged(40_000, ge=0)
    # known_codes: the cosine similarity is taken per latent over the batch's samples (latent,
    # as REFERENCE.md describes the authors' code) or per sample across the latents (sample,
    # F.cosine_similarity's default axis on samples-as-rows codes). docs/RESULTS.md compares them.
    cosine: str = "latent"


@dataclass
class DeviceConfig:
    """Where the run computes: ``device=auto`` (the default), ``cpu``, ``cuda`` or ``mps``."""

    name: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | mps
    # torch intra-op threads on CPU; null = torch's default
    threads: int | None = ranged(None, ge=1)
    autocast: str = "none"  # none | bf16: the training step's matmuls in bfloat16
    tf32: bool = False  # CUDA: TF32 tensor cores for float32 matmuls
    pin_memory: bool = True  # CUDA: host→device copies of batches from pinned memory
    # auto | on | off: CUDA: the training steps between two evaluations as replays of one captured
    # CUDA graph (synthetic full-batch data; sae, mlp, sparse_coding, sae_ito; no compile or
    # autocast), and adam_log inference in captured blocks. auto: wherever that applies; on:
    # refuse to run where training cannot be captured.
    graph: str = "auto"
    graph_steps: int = ranged(1000, ge=1)  # CUDA graphs: training steps per graph at most


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
    # data=lm: a latent is dead when silent for this many tokens
    dead_window: int = ranged(10_000_000, ge=1)


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
    # model initialisation seed; replica i is initialised with seed + i
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    # sparsegap (seed + i keyed away from the data stream) | authors (torch.manual_seed(seed + i +
    # 42) then nn.Linear's default initialisation, as the authors' models; encoders/layers.py)
    init: str = "sparsegap"
    # independently initialised models trained together on the same data
    replicas: int = ranged(5, ge=1)
    # training steps (default: the scenario's paper value)
    steps: int = ranged(II("scenario.steps"), ge=0)
    # evaluate every this many steps (plus step 0 and the last step)
    eval_every: int = ranged(500, ge=1)
    lr: float = ranged(1e-3, gt=0)  # Adam learning rate
    l1_coeff: float = ranged(0.01, ge=0)  # weight of mean|codes| in the loss
    progress: bool = True  # progress bar (only shown when stdout is a terminal)
    compile: bool = False  # torch.compile the training step (worth it for long GPU runs)
    # linear learning-rate warm-up from 0 over this many steps
    lr_warmup_steps: int = ranged(0, ge=0)
    l1_warmup_steps: int = ranged(0, ge=0)  # linear l1_coeff warm-up from 0 over this many steps
    # data=lm: tokens between checkpoints; null = at the end
    checkpoint_every: int | None = ranged(None, ge=1)
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
