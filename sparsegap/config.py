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
DICTIONARY_UPDATES = ("least_squares", "gradient")
SUPPORTS = ("fixed_k", "bernoulli")
FREQUENCIES = ("uniform", "zipf")
IMPORTANCES = ("none", "decay")
COSINE_AXES = ("latent", "sample")  # scenario.cosine: what one cosine similarity runs over
DATA_DICTIONARIES = ("gaussian", "orthogonal", "coherent")
COHERENCE_KINDS = ("mean", "max")
DATA_SOURCES = ("synthetic", "lm")
MODEL_DTYPES = ("float32", "bfloat16", "float16")
AUTOCASTS = ("none", "bf16")
# Encoders that keep state per sample of a fixed training set, which streamed activations lack.
PER_SAMPLE_ENCODERS = ("sparse_coding", "dictionary_learning", "sklearn_dl")


@dataclass
class DataConfig:
    """Synthetic data X = D·S + noise (paper §3.2), one column per sample."""

    source: str = "synthetic"  # synthetic | lm (language-model activations, conf/data/lm.yaml)
    N: int = 16  # number of true sparse sources (dictionary atoms)
    M: int = 8  # number of measurements (dimension of X)
    K: int = 3  # active sources per sample (fixed_k: exactly, uniformly; bernoulli: expected L0)
    train_samples: int = 1024
    test_samples: int = 1024
    # > 0: train on batches of this many samples drawn on the fly (data.train_samples per epoch,
    # the same batches every epoch), never holding the training set; 0 = the paper's full batch.
    stream_batch: int = 0
    magnitude: str = (
        "abs_normal"  # law of the active values: abs_normal | normal | exponential | uniform
    )
    noise_std: float = 0.0  # standard deviation of additive Gaussian noise on X
    seed: int = 0  # data seed; the replicas share the data and differ only in initialisation
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
    evaluation set; the next ``tokens`` are trained on, each once."""

    source: str = "lm"
    model: str = "gpt2"  # Hugging Face hub name of the transformer
    model_path: str | None = None  # local save_pretrained folder, used instead of the hub
    hook: str = "blocks.9.hook_resid_pre"  # transformer-lens hook point whose output is X
    dtype: str = "float32"  # model weights: float32 | bfloat16 | float16
    model_device: str | None = None  # device of the model forward; null = device.name
    model_batch: int = 32  # contexts per model forward
    dataset: str = "Skylion007/openwebtext"  # Hugging Face datasets name, streamed
    dataset_split: str = "train"
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
    """``+cache=build``: harvest the activations of ``data`` to disk instead of training."""

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
class SAEConfig(EncoderConfig, HandStepConfig):
    """Sparse autoencoder: codes = ReLU(W·x [+ b])."""

    name: str = "sae"


@dataclass
class MLPConfig(EncoderConfig, HandStepConfig):
    """One-hidden-layer MLP encoder: codes = ReLU(W2·ReLU(W1·x [+ b1]) [+ b2])."""

    name: str = "mlp"
    hidden: int = 32  # hidden width (paper: 32, 256; 1,024 for known codes)
    # With fast_step on the CPU (float32, sample count and hidden width multiples of 8, at most
    # 64 latents): the whole step as one fused C++ kernel (sparsegap/native), compiled with $CXX
    # (g++) on first use and cached; where it cannot be built the torch step runs and one line
    # on stderr says why. false = the torch step.
    native: bool = True


@dataclass
class SparseCodingConfig(EncoderConfig, HandStepConfig):
    """Free non-negative codes per training sample (S = exp(log S)) learned jointly with the
    dictionary; codes for test samples are inferred by iterative optimisation."""

    name: str = "sparse_coding"
    init_log: float = -10.0  # training log-codes start here (the authors' value)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class SAEITOConfig(EncoderConfig, HandStepConfig):
    """SAE whose test codes are refined by inference-time optimisation against its decoder."""

    name: str = "sae_ito"
    init: str = "sae"  # start inference from the SAE's codes (sae) or from exp(init_log) (scratch)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class TopKConfig(EncoderConfig):
    """TopK SAE (Gao et al. 2024): codes = TopK_k(ReLU(W·x [+ b])) per sample; no L1 penalty."""

    name: str = "topk"
    k: int | None = None  # active latents per sample; null = data.K
    # AuxK (Gao et al. 2024, §A.2): the dead latents' aux_k largest activations reconstruct the
    # residual x − D·codes; aux_coeff × its MSE over the residual's variance, × x's variance, is
    # added to the loss (sparsegap/encoders/topk.py). Revives latents that stopped firing.
    # 0 = off, as in the paper.
    aux_k: int = 0  # dead latents kept per sample (Gao et al.: d/2, e.g. 384 for GPT-2 small)
    aux_coeff: float = 0.03125  # weight α of the AuxK term (Gao et al.: 1/32)
    aux_dead_tokens: int = 10_000_000  # dead: not fired in this many training tokens (samples)


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE (Bussmann et al. 2024): training keeps the k·B largest ReLU(W·x [+ b]) of
    the batch; inference thresholds each sample at the running average of the smallest kept
    activation. No L1 penalty. AuxK as for TopK."""

    name: str = "batch_topk"
    k: int | None = None  # mean active latents per sample; null = data.K
    threshold_momentum: float = 0.01  # EMA weight of the threshold estimate (cumulative mean first)


@dataclass
class JumpReLUConfig(EncoderConfig):
    """JumpReLU SAE (Rajamanoharan et al. 2024b): codes = z·H(z − θ), z = W·x [+ b], learned
    θ = exp(log θ) per latent, straight-through gradients; L0 penalty instead of L1."""

    name: str = "jumprelu"
    l0_coeff: float = 0.2  # weight of mean(H(z − θ)); 0.2 gives L0 ≈ data.K in the default regime
    bandwidth: float = 0.05  # STE rectangle-kernel width ε, in activation units (codes are O(1))
    init_threshold: float = 0.001  # initial θ (the paper's value)


@dataclass
class GatedConfig(EncoderConfig):
    """Gated SAE (Rajamanoharan et al. 2024a): codes = H(W·x + b_gate)·ReLU(exp(r_mag)·W·x +
    b_mag); L1 on ReLU(gate) and an auxiliary reconstruction through a frozen decoder copy."""

    name: str = "gated"
    bias: bool = True  # b_gate and b_mag; without them the gate cannot threshold


@dataclass
class LISTAConfig(EncoderConfig):
    """LISTA (Gregor & LeCun 2010): S_0 = ReLU(W·x − θ), S_{t+1} = ReLU(W·x + G·S_t − θ)."""

    name: str = "lista"
    layers: int = 3  # unrolled iterations T after the first layer (0 = a ReLU SAE with bias −θ)


def _dl_inference() -> InferenceConfig:
    return InferenceConfig(name="fista", iterations=20, l1_coeff=0.2)


@dataclass
class DictionaryLearningConfig(EncoderConfig):
    """Classical alternating minimisation (unknown scenario): each training step infers the
    training codes with ``inference`` (warm-started from the previous step's codes) against the
    current dictionary, then updates the dictionary (least squares D = X·Sᵀ(S·Sᵀ + εI)⁻¹, or one
    gradient step) and renormalises it; unused atoms restart at a training residual. Test codes:
    the same inference. No Adam."""

    name: str = "dictionary_learning"
    dictionary_update: str = "least_squares"  # least_squares | gradient
    ridge: float = 1e-6  # ε of the least-squares update, relative to the mean diagonal of S·Sᵀ
    resample_dead: bool = True  # restart unused and near-duplicate atoms at a random residual
    duplicate_cosine: float = 0.95  # resample_dead: atoms with |cosine| above this are duplicates
    restarts: int = 19  # extra candidate dictionaries per replica; the lowest objective is kept
    test_iterations: int | None = 300  # inference iterations for test codes; null = inference's
    inference: InferenceConfig = field(default_factory=_dl_inference)


@dataclass
class SklearnDLConfig(EncoderConfig):
    """scikit-learn's DictionaryLearning (coordinate descent, non-negative codes), one model per
    replica (random_state = seed + i); each training step runs ``iterations_per_step`` of its
    alternating iterations warm-started from the previous step. Test codes: non-negative
    LARS-lasso (sklearn's transform). Needs the extra ``sparsegap[sklearn]``."""

    name: str = "sklearn_dl"
    alpha: float = 0.05  # sklearn's L1 weight: ½||x − D·s||² + alpha·|s|₁ per sample
    transform_alpha: float | None = None  # LARS-lasso weight at test time; null = alpha
    iterations_per_step: int = 1  # sklearn max_iter per training step


@dataclass
class ScenarioConfig:
    """What is known, what is learned, and the loss (paper §3.5)."""

    name: str = MISSING  # known_codes | known_dictionary | unknown
    steps: int = 40_000  # the paper's number of training steps for this scenario
    # known_codes: the cosine similarity is taken per latent over the batch's samples (latent,
    # as REFERENCE.md describes the authors' code) or per sample across the latents (sample,
    # F.cosine_similarity's default axis on samples-as-rows codes). docs/RESULTS.md compares them.
    cosine: str = "latent"


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | mps
    threads: int | None = None  # torch intra-op threads on CPU; null = torch's default
    autocast: str = "none"  # none | bf16: the training step's matmuls in bfloat16
    tf32: bool = False  # CUDA: TF32 tensor cores for float32 matmuls
    pin_memory: bool = True  # CUDA: host→device copies of batches from pinned memory


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


def register_configs() -> None:
    """Register the schemas; group YAML files extend them via ``defaults: [<name>_schema]``."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="data", name="lm_schema", node=LMDataConfig)
    cs.store(group="cache", name="cache_schema", node=CacheConfig)
    for node in (
        SAEConfig,
        MLPConfig,
        SparseCodingConfig,
        SAEITOConfig,
        TopKConfig,
        BatchTopKConfig,
        JumpReLUConfig,
        GatedConfig,
        LISTAConfig,
        DictionaryLearningConfig,
        SklearnDLConfig,
    ):
        cs.store(group="encoder", name=f"{node.name}_schema", node=node)
    cs.store(group="scenario", name="scenario_schema", node=ScenarioConfig)
    cs.store(group="device", name="device_schema", node=DeviceConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def _need(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    _need(value in allowed, key, value, f"allowed values are {', '.join(allowed)}")


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
    return cfg.data.get("source", "synthetic") == "lm"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _validate_data_laws(d: DictConfig) -> None:
    """Checks of the data laws beyond the paper's (support, frequencies, magnitudes, correlation,
    hierarchy, dictionary, noise)."""
    from sparsegap.data.dictionaries import gaussian_floor
    from sparsegap.data.laws import firing_probabilities, max_expected_l0

    _choice("data.support", d.support, SUPPORTS)
    _choice("data.frequencies", d.frequencies, FREQUENCIES)
    _need(d.zipf_exponent >= 0, "data.zipf_exponent", d.zipf_exponent, "must be >= 0")
    if d.magnitude_std is not None:
        _need(d.magnitude_std >= 0, "data.magnitude_std", d.magnitude_std, "must be >= 0 or null")
    _need(
        d.magnitude_heterogeneity >= 0,
        "data.magnitude_heterogeneity",
        d.magnitude_heterogeneity,
        "must be >= 0",
    )
    _choice("data.importance", d.importance, IMPORTANCES)
    _need(
        0 < d.importance_decay <= 1,
        "data.importance_decay",
        d.importance_decay,
        "must be in (0, 1]",
    )
    _need(
        0 <= d.correlation_rank <= d.N,
        "data.correlation_rank",
        d.correlation_rank,
        f"must be between 0 (independent) and data.N={d.N}",
    )
    _need(
        0 <= d.correlation_scale < 1,
        "data.correlation_scale",
        d.correlation_scale,
        "must be in [0, 1) (0 = independent)",
    )
    _need(d.hierarchy_depth >= 0, "data.hierarchy_depth", d.hierarchy_depth, "must be >= 0")
    _need(
        d.hierarchy_branching >= 1,
        "data.hierarchy_branching",
        d.hierarchy_branching,
        "must be >= 1",
    )
    if d.support == "fixed_k":
        extra = [
            key
            for key, on in (
                ("data.frequencies", d.frequencies != "uniform"),
                ("data.correlation_*", d.correlation_rank > 0 and d.correlation_scale > 0),
                ("data.hierarchy_depth", d.hierarchy_depth > 0),
            )
            if on
        ]
        _need(
            not extra, "data.support", d.support, f"{', '.join(extra)} need data.support=bernoulli"
        )
    elif d.hierarchy_depth > 0:
        allowed = max_expected_l0(d)
        _need(
            allowed + 1e-9 >= d.K,
            "data.K",
            d.K,
            f"the hierarchy (depth {d.hierarchy_depth}, branching {d.hierarchy_branching}) allows"
            f" an expected L0 of at most {allowed:.3g}",
        )
    if d.support == "bernoulli":
        p_max = firing_probabilities(d)[0].max().item()
        key, value = (
            ("data.zipf_exponent", d.zipf_exponent) if d.frequencies == "zipf" else ("data.K", d.K)
        )
        _need(
            p_max <= 1 + 1e-9,
            key,
            value,
            f"the most frequent feature would fire with probability {p_max:.3g} > 1 at data.K="
            f"{d.K}, data.N={d.N}; lower data.zipf_exponent or data.K",
        )
    _choice("data.dictionary", d.dictionary, DATA_DICTIONARIES)
    _choice("data.coherence_kind", d.coherence_kind, COHERENCE_KINDS)
    if d.dictionary == "orthogonal":
        _need(d.N <= d.M, "data.dictionary", d.dictionary, f"needs data.N <= data.M={d.M}")
    if d.dictionary == "coherent":
        _need(
            0 < d.coherence_target < 1,
            "data.coherence_target",
            d.coherence_target,
            "must be in (0, 1)",
        )
        floor = gaussian_floor(d.M, d.N, d.seed, d.coherence_kind)
        _need(
            d.coherence_target >= floor,
            "data.coherence_target",
            d.coherence_target,
            f"must be at least the Gaussian atoms' {d.coherence_kind} |cosine| {floor:.4f}"
            f" (data.seed={d.seed})",
        )
    if d.snr_db is not None:
        _need(
            d.noise_std == 0,
            "data.snr_db",
            d.snr_db,
            f"cannot be combined with data.noise_std={d.noise_std}; set one of them",
        )


def validate(cfg: DictConfig) -> None:
    """Check everything Hydra's type checks cannot, before any data is generated."""
    from sparsegap.encoders import ENCODERS
    from sparsegap.inference import INFERENCE
    from sparsegap.scenarios import SCENARIOS

    d = cfg.data
    _choice("data.source", d.source, DATA_SOURCES)
    lm = is_lm(cfg)
    if lm:
        _validate_lm(cfg)
    else:
        _need(d.N >= 1, "data.N", d.N, "must be at least 1")
        _need(d.M >= 1, "data.M", d.M, "must be at least 1")
        _need(1 <= d.K <= d.N, "data.K", d.K, f"must be between 1 and data.N={d.N}")
        _need(d.train_samples >= 2, "data.train_samples", d.train_samples, "must be at least 2")
        _need(d.test_samples >= 2, "data.test_samples", d.test_samples, "must be at least 2")
        _choice("data.magnitude", d.magnitude, MAGNITUDES)
        _need(d.noise_std >= 0, "data.noise_std", d.noise_std, "must be non-negative")
        _validate_data_laws(d)
        _need(not cfg.resume, "resume", cfg.resume, "checkpoints and resuming need data=lm")
        _need(cfg.get("cache") is None, "cache", "build", "harvesting activations needs data=lm")

    e = cfg.encoder
    _choice("encoder.name", e.name, tuple(ENCODERS))
    _choice("scenario.name", cfg.scenario.name, tuple(SCENARIOS))
    _choice("scenario.cosine", cfg.scenario.get("cosine", "latent"), COSINE_AXES)
    if cfg.scenario.get("cosine") == "sample" and cfg.data.get("importance", "none") != "none":
        raise ConfigError(
            "scenario.cosine=sample is invalid with data.importance="
            f"{cfg.data.importance}: importance weights one latent's cosine term, so they need"
            " scenario.cosine=latent (or data.importance=none)."
        )
    if lm and cfg.scenario.name != "unknown":
        raise ConfigError(
            f"scenario={cfg.scenario.name} does not apply to data=lm: a language model's"
            " activations come with no known codes or dictionary, so only scenario=unknown"
            " applies."
        )
    if lm and e.name in PER_SAMPLE_ENCODERS:
        allowed = [
            name for name in SCENARIOS["unknown"].encoders if name not in PER_SAMPLE_ENCODERS
        ]
        raise ConfigError(
            f"encoder={e.name} does not apply to data=lm: it keeps state per sample of a fixed"
            " training set, and activations stream (each token is seen once). Encoders for"
            f" data=lm: {', '.join(allowed)}."
        )
    stream = 0 if lm else cfg.data.get("stream_batch", 0)
    _need(stream >= 0, "data.stream_batch", stream, "must be >= 0 (0 = the full training batch)")
    if stream > 0 and e.name in PER_SAMPLE_ENCODERS:
        raise ConfigError(
            f"encoder={e.name} does not apply with data.stream_batch={stream}: it keeps state per"
            " sample of a fixed training set. Use data.stream_batch=0 (the full batch) or an"
            " encoder without per-sample state."
        )
    if e.latents is not None:
        _need(e.latents >= 1, "encoder.latents", e.latents, "must be at least 1 (or null = data.N)")
    if "hidden" in e:
        _need(e.hidden >= 1, "encoder.hidden", e.hidden, "must be at least 1")
    if "init" in e:
        _choice("encoder.init", e.init, ITO_INITS)
    check_latent_budgets(cfg)
    if "aux_k" in e:
        if e.aux_k and cfg.scenario.name == "known_codes":
            raise ConfigError(
                f"encoder.aux_k={e.aux_k} is invalid with scenario=known_codes: AuxK reconstructs"
                " the residual through the decoder, and known_codes has none; set encoder.aux_k=0"
            )
        _need(e.aux_coeff >= 0, "encoder.aux_coeff", e.aux_coeff, "must be >= 0")
        dead = e.aux_dead_tokens
        _need(dead >= 1, "encoder.aux_dead_tokens", dead, "must be at least 1")
    if "threshold_momentum" in e:
        m = e.threshold_momentum
        _need(0 < m <= 1, "encoder.threshold_momentum", m, "must be in (0, 1]")
    if "l0_coeff" in e:
        _need(e.l0_coeff >= 0, "encoder.l0_coeff", e.l0_coeff, "must be >= 0")
    if "bandwidth" in e:
        _need(e.bandwidth > 0, "encoder.bandwidth", e.bandwidth, "must be positive")
    if "init_threshold" in e:
        _need(e.init_threshold > 0, "encoder.init_threshold", e.init_threshold, "must be positive")
    if "layers" in e:
        _need(e.layers >= 0, "encoder.layers", e.layers, "must be >= 0")
    if "dictionary_update" in e:
        _choice("encoder.dictionary_update", e.dictionary_update, DICTIONARY_UPDATES)
        _need(e.ridge >= 0, "encoder.ridge", e.ridge, "must be >= 0")
        cos = e.duplicate_cosine
        _need(0 < cos <= 1, "encoder.duplicate_cosine", cos, "must be in (0, 1] (1 = never)")
        _need(e.restarts >= 0, "encoder.restarts", e.restarts, "must be >= 0")
        if e.test_iterations is not None:
            allowed = "must be >= 0 (or null = encoder.inference.iterations)"
            _need(e.test_iterations >= 0, "encoder.test_iterations", e.test_iterations, allowed)
    if "alpha" in e:
        _need(e.alpha > 0, "encoder.alpha", e.alpha, "must be positive")
        if e.transform_alpha is not None:
            allowed = "must be positive (or null = encoder.alpha)"
            _need(e.transform_alpha > 0, "encoder.transform_alpha", e.transform_alpha, allowed)
        steps = e.iterations_per_step
        _need(steps >= 1, "encoder.iterations_per_step", steps, "must be at least 1")
    if "inference" in e:
        inf = e.inference
        _choice("encoder.inference.name", inf.name, tuple(INFERENCE))
        _need(inf.iterations >= 0, "encoder.inference.iterations", inf.iterations, "must be >= 0")
        _need(inf.lr > 0, "encoder.inference.lr", inf.lr, "must be positive")
        if inf.l1_coeff is not None:
            _need(inf.l1_coeff >= 0, "encoder.inference.l1_coeff", inf.l1_coeff, "must be >= 0")

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
    _choice("device.autocast", cfg.device.autocast, AUTOCASTS)
    _need(cfg.lr_warmup_steps >= 0, "lr_warmup_steps", cfg.lr_warmup_steps, "must be >= 0")
    _need(cfg.l1_warmup_steps >= 0, "l1_warmup_steps", cfg.l1_warmup_steps, "must be >= 0")
    _need(cfg.metrics.dead_window >= 1, "metrics.dead_window", cfg.metrics.dead_window, ">= 1")
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
    if lm:  # last: a hub name offline fails here, within seconds, saying how to use local files
        _check_lm_sources(d)


def check_latent_budgets(cfg: DictConfig) -> None:
    """The budgets the number of latents bounds: ``encoder.k``, ``encoder.aux_k`` and
    ``encoder.inference.k``. ``validate`` runs it; ``data=lm`` runs it again once d, and so the
    number of latents, is known."""
    e = cfg.encoder
    if "k" in e:
        _check_k(cfg, "encoder.k", e.k)
    if "aux_k" in e:
        latents = latents_of(cfg)
        fits = e.aux_k >= 0 and (latents is None or e.aux_k <= latents)
        top = "" if latents is None else f" ({latents})"
        allowed = f"must be between 0 (off) and the number of latents{top}"
        _need(fits, "encoder.aux_k", e.aux_k, allowed)
    inf = e.get("inference")
    if inf is not None and (inf.k is not None or (is_lm(cfg) and inf.name in ("mp", "omp", "gp"))):
        _check_k(cfg, "encoder.inference.k", inf.k)


def _check_k(cfg: DictConfig, key: str, k: int | None) -> None:
    """An atom/latent budget: null means data.K, which activations do not have."""
    if k is None and is_lm(cfg):
        raise ConfigError(f"{key}=None is invalid: data=lm has no data.K to default to; set {key}")
    if k is None:
        k, key = cfg.data.K, f"{key} (null = data.K)"
    latents = latents_of(cfg)
    if latents is None:
        _need(k >= 1, key, k, "must be at least 1")
    else:
        allowed = f"must be between 1 and the number of latents ({latents}), or null"
        _need(1 <= k <= latents, key, k, allowed)


def _validate_lm(cfg: DictConfig) -> None:
    """Value checks of ``data=lm`` and ``+cache=build``."""
    d = cfg.data
    _need("hook" in d, "data.source", d.source, "needs the lm data preset: use data=lm")
    _choice("data.dtype", d.dtype, MODEL_DTYPES)
    _need(d.context >= 2, "data.context", d.context, "must be at least 2 (BOS + one token)")
    _need(d.model_batch >= 1, "data.model_batch", d.model_batch, "must be at least 1")
    _need(d.test_tokens >= 2, "data.test_tokens", d.test_tokens, "must be at least 2")
    _need(d.batch_tokens >= 1, "data.batch_tokens", d.batch_tokens, "must be at least 1")
    if d.tokens is not None:
        allowed = f"must be at least data.batch_tokens={d.batch_tokens} (or null)"
        _need(d.tokens >= d.batch_tokens, "data.tokens", d.tokens, allowed)
    allowed = f"must be 0 (no shuffling) or at least data.batch_tokens={d.batch_tokens}"
    _need(
        d.shuffle_tokens == 0 or d.shuffle_tokens >= d.batch_tokens,
        "data.shuffle_tokens",
        d.shuffle_tokens,
        allowed,
    )
    _need(d.expansion >= 1, "data.expansion", d.expansion, "must be at least 1")
    if d.model_device is not None:
        _choice("data.model_device", d.model_device, DEVICES[1:])
    if cfg.checkpoint_every is not None:
        _need(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, ">= 1 or null")
    build = cfg.get("cache")
    if build is not None:
        _choice("cache.dtype", build.dtype, MODEL_DTYPES)
        _need(build.flush_tokens >= 1, "cache.flush_tokens", build.flush_tokens, ">= 1")
        _need(
            d.cache is None,
            "data.cache",
            d.cache,
            "must be null with +cache=build (it builds a cache; train from it afterwards)",
        )


def _check_lm_sources(d: DictConfig) -> None:
    """That the cache, or the model and the text, can be reached (the last check: it may wait
    a few seconds for the network)."""
    from sparsegap.data import activations

    if d.cache is not None:
        activations.read_manifest(d.cache)  # raises ConfigError naming data.cache
    else:
        activations.check_available(d)


def fill_defaults(cfg: DictConfig) -> None:
    """Resolve the defaults that depend on other keys, so the logged config shows real values:
    a pursuit algorithm's atom budget ``encoder.inference.k`` and a TopK encoder's ``encoder.k``
    default to ``data.K``."""
    if is_lm(cfg):
        from sparsegap.data.activations import fill_lm_defaults

        fill_lm_defaults(cfg.data)
        cfg.steps = cfg.data.tokens // cfg.data.batch_tokens
        return
    if "inference" in cfg.encoder and cfg.encoder.inference.k is None:
        cfg.encoder.inference.k = cfg.data.K
    if "k" in cfg.encoder and cfg.encoder.k is None:
        cfg.encoder.k = cfg.data.K


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (what W&B and summary.json store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
