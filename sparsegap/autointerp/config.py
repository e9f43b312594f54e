"""Typed configuration of ``python -m sparsegap.autointerp`` and its cross-field checks.

Every option is a field below; its comment is the documentation. ``conf/autointerp/`` holds thin
YAML presets over these schemas (``explainer=llm|ngram``, ``scorer=llm|rule``). ``validate``
raises ``sparsegap.config.ConfigError`` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from sparsegap.config import DEVICES, LOGGER_MODES, DeviceConfig, LoggerConfig
from sparsegap.errors import ConfigError, choice, need

EXPLAINERS = ("llm", "ngram")
SCORERS = ("llm", "rule")


@dataclass
class CorpusConfig:
    """Held-out text scanned for activation records."""

    path: str | None = None  # .txt (a document per line) or .jsonl ("text") file or glob; null =
    # the run's own text (data.text_files or data.dataset)
    skip_tokens: int | None = None  # text tokens skipped first (whole documents); null = 0 for
    # corpus.path, and for the run's own text the data.test_tokens + data.tokens it consumed
    tokens: int = 131_072  # held-out tokens scanned (rounded down to whole contexts)
    context: int = 32  # tokens per example context (the LM sees each context after a BOS)
    batch_size: int = 64  # contexts per forward pass of the language model


@dataclass
class ExamplesConfig:
    """Which contexts each feature is explained and scored on; the two sets are disjoint."""

    explain_top: int = 10  # top-activating contexts shown to the explainer
    explain_sampled: int = 10  # more explainer contexts, stratified over activation quantiles
    quantiles: int = 5  # activation quantile bins for the stratified samples
    score_activating: int = 5  # held-out activating contexts the scorer labels
    score_non_activating: int = 5  # held-out contexts where the feature never fires
    logit_tokens: int = 10  # top and bottom promoted tokens (W_U·d) shown to the explainer
    mark_fraction: float = 0.0  # LLM explainer marks tokens above this fraction of the peak


@dataclass
class LLMConfig:
    """An OpenAI-compatible chat-completions endpoint (the ``openai`` SDK)."""

    model: str = "gpt-4o-mini"  # model name sent to the endpoint
    base_url: str | None = None  # null = OpenAI; e.g. http://localhost:8000/v1 for a local server
    api_key: str | None = None  # null = the environment variable named by api_key_env (better:
    # a key given here is moved there before anything is written, never recorded; secrets.py)
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 512  # completion tokens per request
    timeout_s: float = 60.0  # per request; a timeout is retried
    max_retries: int = 5  # retries after a 429, a 5xx, a timeout or a dropped connection
    backoff_s: float = 1.0  # first retry delay; doubles each retry (with jitter), Retry-After wins
    max_backoff_s: float = 30.0
    concurrency: int = 8  # requests in flight at once
    cache_dir: str | None = "outputs/autointerp/llm_cache"  # response cache; null = no cache
    input_usd_per_mtok: float = 0.0  # price of a million prompt tokens (cost in the summary)
    output_usd_per_mtok: float = 0.0  # price of a million completion tokens


@dataclass
class ExplainerConfig:
    name: str = MISSING  # llm | ngram


@dataclass
class LLMExplainerConfig(ExplainerConfig):
    """Ask ``llm`` for an explanation (paper App. H.1); the reply's ``[EXPLANATION]:`` line."""

    name: str = "llm"


@dataclass
class NgramExplainerConfig(ExplainerConfig):
    """Deterministic explanation from token statistics: the tokens and (previous token, token)
    bigrams at the explanation contexts' peaks with the highest log-odds against their corpus
    frequency, chosen greedily by covered peaks × log-odds."""

    name: str = "ngram"
    max_terms: int = 5  # tokens and bigrams in one explanation
    coverage: float = 0.9  # stop once this fraction of the explanation peaks is covered
    min_count: int = 2  # a term must cover at least this many explanation peaks
    min_log_odds: float = 0.7  # a term must be at least e^0.7 ≈ 2× enriched at the peaks
    smoothing: float = 1.0  # additive smoothing of the counts


@dataclass
class ScorerConfig:
    name: str = MISSING  # llm | rule


@dataclass
class LLMScorerConfig(ScorerConfig):
    """Ask ``llm`` to label held-out examples given the explanation (paper App. H.2)."""

    name: str = "llm"


@dataclass
class RuleScorerConfig(ScorerConfig):
    """Label a held-out example 1 when its marked token matches a token or bigram quoted in the
    explanation (the n-gram explainer's format); no LLM."""

    name: str = "rule"


@dataclass
class AutointerpConfig:
    """Top level of ``python -m sparsegap.autointerp``."""

    run: str = MISSING  # folder of a trained language-model encoder run
    features: int = 200  # random live features explained and scored
    replica: int = 0  # which of the run's replicas
    seed: int = 0  # feature sampling, stratified examples and scoring order
    label: str | None = None  # encoder name in the report; null = from the run's config
    device: Any = MISSING  # device=auto|cpu|cuda|mps, device.threads (torch threads on CPU)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    explainer: Any = MISSING
    scorer: Any = MISSING
    logger: Any = MISSING  # wandb (offline by default) | none


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="autointerp_schema", node=AutointerpConfig)
    cs.store(group="explainer", name="llm_schema", node=LLMExplainerConfig)
    cs.store(group="explainer", name="ngram_schema", node=NgramExplainerConfig)
    cs.store(group="scorer", name="llm_schema", node=LLMScorerConfig)
    cs.store(group="scorer", name="rule_schema", node=RuleScorerConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="device", name="device_schema", node=DeviceConfig)


def _at_least(cfg: DictConfig, key: str, low: float) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    need(value >= low, key, value, f"must be at least {low}")


def validate(cfg: DictConfig) -> None:
    """Checks Hydra's type checks cannot express, before any model is loaded."""
    choice("explainer.name", cfg.explainer.name, EXPLAINERS)
    choice("scorer.name", cfg.scorer.name, SCORERS)
    choice("device.name", cfg.device.name, DEVICES)
    if cfg.device.name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda is invalid: no CUDA GPU is visible here; use cpu or auto")
    for key, low in (
        ("features", 1),
        ("replica", 0),
        ("corpus.context", 2),
        ("corpus.batch_size", 1),
        ("examples.explain_top", 1),
        ("examples.explain_sampled", 0),
        ("examples.quantiles", 1),
        ("examples.score_activating", 1),
        ("examples.score_non_activating", 1),
        ("examples.logit_tokens", 0),
        ("llm.max_tokens", 1),
        ("llm.max_retries", 0),
        ("llm.concurrency", 1),
        ("llm.temperature", 0),
        ("llm.backoff_s", 0),
        ("llm.max_backoff_s", 0),
        ("llm.input_usd_per_mtok", 0),
        ("llm.output_usd_per_mtok", 0),
    ):
        _at_least(cfg, key, low)
    f = cfg.examples.mark_fraction
    need(0 <= f <= 1, "examples.mark_fraction", f, "must be in [0, 1]")
    if cfg.corpus.skip_tokens is not None:
        _at_least(cfg, "corpus.skip_tokens", 0)
    if cfg.device.threads is not None:
        _at_least(cfg, "device.threads", 1)
    need(cfg.llm.timeout_s > 0, "llm.timeout_s", cfg.llm.timeout_s, "must be positive")
    need(
        cfg.corpus.tokens >= cfg.corpus.context,
        "corpus.tokens",
        cfg.corpus.tokens,
        f"must be at least corpus.context={cfg.corpus.context}",
    )
    if cfg.explainer.name == "ngram":
        e = cfg.explainer
        _at_least(cfg, "explainer.max_terms", 1)
        _at_least(cfg, "explainer.min_count", 1)
        need(0 < e.coverage <= 1, "explainer.coverage", e.coverage, "must be in (0, 1]")
        need(e.smoothing > 0, "explainer.smoothing", e.smoothing, "must be positive")
    choice("logger.name", cfg.logger.name, ("wandb", "none"))
    if cfg.logger.name == "wandb":
        choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
