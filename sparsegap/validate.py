"""The checks a type cannot express, across fields and groups, run before anything is built.

Schemas are in ``sparsegap/config.py``; each encoder's and inference algorithm's own value checks
live with the method (``Encoder.check``, ``Inference.check``) and are reached through the
registry. Every failure is a ``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sparsegap.config import (
    AUTOCASTS,
    COHERENCE_KINDS,
    COSINE_AXES,
    DATA_DICTIONARIES,
    DATA_DRAWS,
    DATA_SOURCES,
    DEVICES,
    DICTIONARY_SIMILARITIES,
    FREQUENCIES,
    IMPORTANCES,
    INIT_SCHEMES,
    LOGGER_MODES,
    LOGGERS,
    MAGNITUDES,
    MODEL_DTYPES,
    SUPPORTS,
    is_lm,
    latents_of,
)
from sparsegap.encoders import ENCODERS
from sparsegap.errors import ConfigError, choice, need
from sparsegap.registry import encoders_for
from sparsegap.scenarios import SCENARIOS


def check_encoder(cfg: DictConfig) -> None:
    """The encoder's own checks (``Encoder.check``); ``validate`` runs them, and ``data=lm``
    again once d, and so the number of latents its budgets are bounded by, is known."""
    ENCODERS[cfg.encoder.name].check(cfg)


def check_data_laws(d: DictConfig) -> None:
    """Checks of the data laws beyond the paper's (support, frequencies, magnitudes, correlation,
    hierarchy, dictionary, noise)."""
    from sparsegap.data.authors import problems as authors_problems
    from sparsegap.data.dictionaries import gaussian_floor
    from sparsegap.data.laws import firing_probabilities, max_expected_l0

    choice("data.draw", d.draw, DATA_DRAWS)
    if d.draw == "authors":
        bad = authors_problems(d)
        need(not bad, "data.draw", d.draw, f"draws only the authors' law; not {', '.join(bad)}")
    choice("data.support", d.support, SUPPORTS)
    choice("data.frequencies", d.frequencies, FREQUENCIES)
    need(d.zipf_exponent >= 0, "data.zipf_exponent", d.zipf_exponent, "must be >= 0")
    if d.magnitude_std is not None:
        need(d.magnitude_std >= 0, "data.magnitude_std", d.magnitude_std, "must be >= 0 or null")
    need(
        d.magnitude_heterogeneity >= 0,
        "data.magnitude_heterogeneity",
        d.magnitude_heterogeneity,
        "must be >= 0",
    )
    choice("data.importance", d.importance, IMPORTANCES)
    need(
        0 < d.importance_decay <= 1,
        "data.importance_decay",
        d.importance_decay,
        "must be in (0, 1]",
    )
    need(
        0 <= d.correlation_rank <= d.N,
        "data.correlation_rank",
        d.correlation_rank,
        f"must be between 0 (independent) and data.N={d.N}",
    )
    need(
        0 <= d.correlation_scale < 1,
        "data.correlation_scale",
        d.correlation_scale,
        "must be in [0, 1) (0 = independent)",
    )
    need(d.hierarchy_depth >= 0, "data.hierarchy_depth", d.hierarchy_depth, "must be >= 0")
    need(
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
        need(
            not extra, "data.support", d.support, f"{', '.join(extra)} need data.support=bernoulli"
        )
    elif d.hierarchy_depth > 0:
        allowed = max_expected_l0(d)
        need(
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
        need(
            p_max <= 1 + 1e-9,
            key,
            value,
            f"the most frequent feature would fire with probability {p_max:.3g} > 1 at data.K="
            f"{d.K}, data.N={d.N}; lower data.zipf_exponent or data.K",
        )
    choice("data.dictionary", d.dictionary, DATA_DICTIONARIES)
    choice("data.coherence_kind", d.coherence_kind, COHERENCE_KINDS)
    if d.dictionary == "orthogonal":
        need(d.N <= d.M, "data.dictionary", d.dictionary, f"needs data.N <= data.M={d.M}")
    if d.dictionary == "coherent":
        need(
            0 < d.coherence_target < 1,
            "data.coherence_target",
            d.coherence_target,
            "must be in (0, 1)",
        )
        floor = gaussian_floor(d.M, d.N, d.seed, d.coherence_kind)
        need(
            d.coherence_target >= floor,
            "data.coherence_target",
            d.coherence_target,
            f"must be at least the Gaussian atoms' {d.coherence_kind} |cosine| {floor:.4f}"
            f" (data.seed={d.seed})",
        )
    if d.snr_db is not None:
        need(
            d.noise_std == 0,
            "data.snr_db",
            d.snr_db,
            f"cannot be combined with data.noise_std={d.noise_std}; set one of them",
        )


def validate(cfg: DictConfig) -> None:
    """Check everything Hydra's type checks cannot, before any data is generated."""
    d = cfg.data
    choice("data.source", d.source, DATA_SOURCES)
    lm = is_lm(cfg)
    if lm:
        _validate_lm(cfg)
    else:
        need(d.N >= 1, "data.N", d.N, "must be at least 1")
        need(d.M >= 1, "data.M", d.M, "must be at least 1")
        need(1 <= d.K <= d.N, "data.K", d.K, f"must be between 1 and data.N={d.N}")
        need(d.train_samples >= 2, "data.train_samples", d.train_samples, "must be at least 2")
        need(d.test_samples >= 2, "data.test_samples", d.test_samples, "must be at least 2")
        choice("data.magnitude", d.magnitude, MAGNITUDES)
        need(d.noise_std >= 0, "data.noise_std", d.noise_std, "must be non-negative")
        check_data_laws(d)
        need(not cfg.resume, "resume", cfg.resume, "checkpoints and resuming need data=lm")
        need(cfg.cache is None, "cache", "build", "harvesting activations needs data=lm")

    e = cfg.encoder
    choice("init", cfg.init, INIT_SCHEMES)
    choice("encoder.name", e.name, tuple(ENCODERS))
    choice("scenario.name", cfg.scenario.name, tuple(SCENARIOS))
    choice("scenario.cosine", cfg.scenario.cosine, COSINE_AXES)
    if cfg.scenario.cosine == "sample" and not lm and d.importance != "none":
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
    encoder = ENCODERS[e.name]
    if lm and encoder.per_sample:
        allowed = [name for name in encoders_for("unknown") if not ENCODERS[name].per_sample]
        raise ConfigError(
            f"encoder={e.name} does not apply to data=lm: it keeps state per sample of a fixed"
            " training set, and activations stream (each token is seen once). Encoders for"
            f" data=lm: {', '.join(allowed)}."
        )
    stream = 0 if lm else d.stream_batch
    need(stream >= 0, "data.stream_batch", stream, "must be >= 0 (0 = the full training batch)")
    if stream > 0 and encoder.per_sample:
        raise ConfigError(
            f"encoder={e.name} does not apply with data.stream_batch={stream}: it keeps state per"
            " sample of a fixed training set. Use data.stream_batch=0 (the full batch) or an"
            " encoder without per-sample state."
        )
    if e.latents is not None:
        need(e.latents >= 1, "encoder.latents", e.latents, "must be at least 1 (or null = data.N)")
    check_encoder(cfg)

    scenario = SCENARIOS[cfg.scenario.name]
    if cfg.scenario.name not in encoder.scenarios:
        raise ConfigError(
            f"encoder={e.name} does not apply to scenario={cfg.scenario.name}: {scenario.why_not}"
            f" Encoders for this scenario: {', '.join(encoders_for(cfg.scenario.name))}."
        )
    if scenario.needs_matching_latents and latents_of(cfg) != d.N:
        raise ConfigError(
            f"encoder.latents={e.latents} is invalid for scenario={cfg.scenario.name}: its codes"
            f" are tied to the true sources, so it needs data.N={d.N} latents (or null)"
        )

    need(cfg.steps >= 0, "steps", cfg.steps, "must be >= 0")
    need(cfg.replicas >= 1, "replicas", cfg.replicas, "must be at least 1")
    need(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "must be at least 1")
    need(cfg.lr > 0, "lr", cfg.lr, "must be positive")
    need(cfg.l1_coeff >= 0, "l1_coeff", cfg.l1_coeff, "must be >= 0")
    choice(
        "metrics.dictionary_similarity", cfg.metrics.dictionary_similarity, DICTIONARY_SIMILARITIES
    )

    choice("device.name", cfg.device.name, DEVICES)
    choice("device.autocast", cfg.device.autocast, AUTOCASTS)
    need(cfg.lr_warmup_steps >= 0, "lr_warmup_steps", cfg.lr_warmup_steps, "must be >= 0")
    need(cfg.l1_warmup_steps >= 0, "l1_warmup_steps", cfg.l1_warmup_steps, "must be >= 0")
    need(cfg.metrics.dead_window >= 1, "metrics.dead_window", cfg.metrics.dead_window, ">= 1")
    if cfg.device.name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda is invalid: no CUDA GPU is visible here; use device=cpu or auto"
        )
    if cfg.device.name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device=mps is invalid: MPS is not available here; use device=cpu or auto"
        )
    if cfg.device.threads is not None:
        need(cfg.device.threads >= 1, "device.threads", cfg.device.threads, "must be at least 1")

    choice("logger.name", cfg.logger.name, LOGGERS)
    if cfg.logger.name == "wandb":
        choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    if lm:  # last: a hub name offline fails here, within seconds, saying how to use local files
        _check_lm_sources(d)


def _validate_lm(cfg: DictConfig) -> None:
    """Value checks of ``data=lm`` and ``+cache=build``."""
    d = cfg.data
    need("hook" in d, "data.source", d.source, "needs the lm data preset: use data=lm")
    choice("data.dtype", d.dtype, MODEL_DTYPES)
    need(d.context >= 2, "data.context", d.context, "must be at least 2 (BOS + one token)")
    need(d.model_batch >= 1, "data.model_batch", d.model_batch, "must be at least 1")
    need(d.test_tokens >= 2, "data.test_tokens", d.test_tokens, "must be at least 2")
    need(d.batch_tokens >= 1, "data.batch_tokens", d.batch_tokens, "must be at least 1")
    if d.tokens is not None:
        allowed = f"must be at least data.batch_tokens={d.batch_tokens} (or null)"
        need(d.tokens >= d.batch_tokens, "data.tokens", d.tokens, allowed)
    allowed = f"must be 0 (no shuffling) or at least data.batch_tokens={d.batch_tokens}"
    need(
        d.shuffle_tokens == 0 or d.shuffle_tokens >= d.batch_tokens,
        "data.shuffle_tokens",
        d.shuffle_tokens,
        allowed,
    )
    need(d.expansion >= 1, "data.expansion", d.expansion, "must be at least 1")
    if d.model_device is not None:
        choice("data.model_device", d.model_device, DEVICES[1:])
    if cfg.checkpoint_every is not None:
        need(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, ">= 1 or null")
    build = cfg.cache
    if build is not None:
        choice("cache.dtype", build.dtype, MODEL_DTYPES)
        need(build.flush_tokens >= 1, "cache.flush_tokens", build.flush_tokens, ">= 1")
        need(
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
    ``data=lm``'s from the model or cache, on synthetic data the encoder's own
    (``Encoder.resolve``: e.g. ``encoder.k`` and ``encoder.inference.k`` default to ``data.K``)."""
    if is_lm(cfg):
        from sparsegap.data.activations import fill_lm_defaults

        fill_lm_defaults(cfg.data)
        cfg.steps = cfg.data.tokens // cfg.data.batch_tokens
        return
    ENCODERS[cfg.encoder.name].resolve(cfg)
