"""The checks a type cannot express, across fields and groups, run before anything is built.

Schemas are in ``sparsegap/config.py``; ``check_schema`` holds the composed config to them as a
whole (no key outside a schema, every number in its declared range, NaN and ±inf only where
declared). Each encoder's and inference algorithm's own value checks live with the method
(``Encoder.check``, ``Inference.check``) and are reached through the registry. Every failure is a
``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

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
    GRAPH_MODES,
    IMPORTANCES,
    INIT_SCHEMES,
    LOGGER_MODES,
    LOGGERS,
    MAGNITUDES,
    MODEL_DTYPES,
    SUPPORTS,
    CacheConfig,
    Config,
    DataConfig,
    DeviceConfig,
    LMDataConfig,
    LoggerConfig,
    ScenarioConfig,
    is_lm,
    latents_of,
    range_of,
)
from sparsegap.encoders import ENCODERS
from sparsegap.errors import ConfigError, choice, need
from sparsegap.registry import encoders_for
from sparsegap.runtime import resolve_device
from sparsegap.scenarios import SCENARIOS


def check_schema(node: DictConfig, prefix: str = "", schema: Any = None) -> None:
    """Hold ``node`` and the nodes under it to their schemas: a key the schema lacks
    (``+data.foo=1``) and a number outside its field's declared range (``config.ranged``; NaN
    and ±inf included) are errors. A node's schema is the dataclass it was composed from; a
    config loaded back from a run's YAML has no types, so there it is ``schema`` (``validate``
    passes ``Config``), the type a field declares, or for a group the selected option's."""
    typed = OmegaConf.get_type(node)
    schema = typed if dataclasses.is_dataclass(typed) else schema
    if not dataclasses.is_dataclass(schema):
        return
    fields = {spec.name: spec for spec in dataclasses.fields(schema)}
    for key in node:
        if key not in fields:
            raise unknown_key(f"{prefix}{key}", node[key], sorted(fields))
    declared = typing.get_type_hints(schema)
    for name, spec in fields.items():
        if name not in node or OmegaConf.is_missing(node, name):
            continue
        value = node[name]
        if isinstance(value, DictConfig):
            option = _GROUPS.get(name) if schema is Config else None
            check_schema(value, f"{prefix}{name}.", option(value) if option else declared[name])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_of(spec).problem(value, node, prefix)
            need(problem is None, f"{prefix}{name}", value, problem or "")


# The schema of each group's selected option, from the option's own fields (for untyped configs).
_GROUPS: dict[str, Callable[[DictConfig], Any]] = {
    "data": lambda node: LMDataConfig if node.get("source") == "lm" else DataConfig,
    "encoder": lambda node: getattr(ENCODERS.get(node.get("name")), "config", None),
    "scenario": lambda node: ScenarioConfig,
    "device": lambda node: DeviceConfig,
    "logger": lambda node: LoggerConfig,
    "cache": lambda node: CacheConfig,
}


def unknown_key(key: str, value: object, allowed: list[str]) -> ConfigError:
    """The error of a key no schema has, naming the keys its parent allows."""
    parent, _, _ = key.rpartition(".")
    where = parent or "the config"
    return ConfigError(
        f"{key}={value} is invalid: {where} has no key {key.rpartition('.')[2]!r}; its keys are"
        f" {', '.join(allowed)}"
    )


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
    choice("data.importance", d.importance, IMPORTANCES)
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


def validate(cfg: DictConfig, reach_sources: bool = True) -> None:
    """Check everything Hydra's type checks cannot, before any data is generated;
    ``reach_sources=False`` leaves out whether ``data=lm``'s model, text or cache can be reached
    (the one check that may wait on the network)."""
    check_schema(cfg, schema=Config)
    d = cfg.data
    choice("data.source", d.source, DATA_SOURCES)
    lm = is_lm(cfg)
    if lm:
        _validate_lm(cfg)
    else:
        choice("data.magnitude", d.magnitude, MAGNITUDES)
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
    if stream > 0 and encoder.per_sample:
        raise ConfigError(
            f"encoder={e.name} does not apply with data.stream_batch={stream}: it keeps state per"
            " sample of a fixed training set. Use data.stream_batch=0 (the full batch) or an"
            " encoder without per-sample state."
        )
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

    choice(
        "metrics.dictionary_similarity", cfg.metrics.dictionary_similarity, DICTIONARY_SIMILARITIES
    )

    choice("device.name", cfg.device.name, DEVICES)
    choice("device.autocast", cfg.device.autocast, AUTOCASTS)
    choice("device.graph", cfg.device.graph, GRAPH_MODES)
    if cfg.device.name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda is invalid: no CUDA GPU is visible here; use device=cpu or auto"
        )
    if cfg.device.name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device=mps is invalid: MPS is not available here; use device=cpu or auto"
        )
    graph_enabled(cfg)  # device.graph=on where the steps cannot be captured: refused here

    choice("logger.name", cfg.logger.name, LOGGERS)
    if cfg.logger.name == "wandb":
        choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    if lm and reach_sources:  # last: a hub name offline fails here, within seconds
        _check_lm_sources(d)


def _validate_lm(cfg: DictConfig) -> None:
    """Value checks of ``data=lm`` and ``+cache=build``."""
    d = cfg.data
    need("hook" in d, "data.source", d.source, "needs the lm data preset: use data=lm")
    choice("data.dtype", d.dtype, MODEL_DTYPES)
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
    if d.model_device is not None:
        choice("data.model_device", d.model_device, DEVICES[1:])
    build = cfg.cache
    if build is not None:
        choice("cache.dtype", build.dtype, MODEL_DTYPES)
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


def graph_unsupported(cfg: DictConfig) -> str | None:
    """Why the training steps of ``cfg`` cannot be captured as CUDA graphs
    (sparsegap/accel/graph.py), in one clause, or None when they can."""
    if is_lm(cfg):
        return "data=lm streams its batches from the host"
    if cfg.data.stream_batch > 0:
        return f"data.stream_batch={cfg.data.stream_batch} draws each batch on the host"
    if cfg.compile:
        return "compile=true compiles the loss instead"
    if cfg.device.autocast != "none":
        return f"device.autocast={cfg.device.autocast} is not captured"
    if not ENCODERS[cfg.encoder.name].capturable:
        names = ", ".join(name for name, cls in ENCODERS.items() if cls.capturable)
        return f"encoder={cfg.encoder.name} has no capturable step (capturable: {names})"
    device = resolve_device(cfg.device.name)
    if device.type != "cuda":
        return f"device.name={cfg.device.name} runs on {device.type}; CUDA graphs need a CUDA GPU"
    return None


def graph_enabled(cfg: DictConfig) -> bool:
    """Whether training runs as captured CUDA graphs: ``device.graph=on``, or ``auto`` where the
    steps can be captured (``graph_unsupported``); ``on`` where they cannot raises
    ``ConfigError``."""
    mode = cfg.device.graph
    if mode == "off":
        return False
    reason = graph_unsupported(cfg)
    if mode == "on" and reason is not None:
        raise ConfigError(f"device.graph=on is invalid: {reason}; use device.graph=auto or off")
    return reason is None
