"""Typed configuration of ``python -m sparsegap.autointerp`` and its cross-field checks.

Every option is a field below; its comment is the documentation. The options of the config
groups (``explainer=llm|ngram``, ``scorer=llm|rule``, ``logger``, ``device``) are these schemas,
stored by ``register_configs``; ``conf/autointerp/config.yaml`` picks the defaults. ``validate``
raises ``sparsegap.config.ConfigError`` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from sparsegap.config import (
    DEVICES,
    LOGGER_MODES,
    LOGGERS,
    SEED_MAX,
    DeviceConfig,
    LoggerConfig,
    ranged,
)
from sparsegap.errors import ConfigError, choice, need
from sparsegap.validate import check_schema

EXPLAINERS = ("llm", "ngram")
SCORERS = ("llm", "rule")


@dataclass
class CorpusConfig:
    """Held-out text scanned for activation records."""

    path: str | None = None  # .txt (a document per line) or .jsonl ("text") file or glob; null =
    # the run's own text (data.text_files or data.dataset)
    # text tokens skipped first (whole documents); null = 0 for
    skip_tokens: int | None = ranged(None, ge=0)
    # corpus.path, and for the run's own text the data.test_tokens + data.tokens it consumed
    tokens: int = ranged(131_072, ge=1)  # held-out tokens scanned (rounded down to whole contexts)
    # tokens per example context (the LM sees each context after a BOS)
    context: int = ranged(32, ge=2)
    batch_size: int = ranged(64, ge=1)  # contexts per forward pass of the language model


@dataclass
class ExamplesConfig:
    """Which contexts each feature is explained and scored on; the two sets are disjoint."""

    explain_top: int = ranged(10, ge=1)  # top-activating contexts shown to the explainer
    # more explainer contexts, stratified over activation quantiles
    explain_sampled: int = ranged(10, ge=0)
    quantiles: int = ranged(5, ge=1)  # activation quantile bins for the stratified samples
    score_activating: int = ranged(5, ge=1)  # held-out activating contexts the scorer labels
    score_non_activating: int = ranged(5, ge=1)  # held-out contexts where the feature never fires
    # top and bottom promoted tokens (W_U·d) shown to the explainer
    logit_tokens: int = ranged(10, ge=0)
    # LLM explainer marks tokens above this fraction of the peak
    mark_fraction: float = ranged(0.0, ge=0, le=1)


@dataclass
class LLMConfig:
    """An OpenAI-compatible chat-completions endpoint (the ``openai`` SDK)."""

    model: str = "gpt-4o-mini"  # model name sent to the endpoint
    base_url: str | None = None  # null = OpenAI; e.g. http://localhost:8000/v1 for a local server
    api_key: str | None = None  # null = the environment variable named by api_key_env (better:
    # a key given here is moved there before anything is written, never recorded; secrets.py)
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = ranged(0.0, ge=0)
    max_tokens: int = ranged(512, ge=1)  # completion tokens per request
    timeout_s: float = ranged(60.0, gt=0)  # per request; a timeout is retried
    # retries after a 429, a 5xx, a timeout or a dropped connection
    max_retries: int = ranged(5, ge=0)
    # first retry delay; doubles each retry (with jitter), Retry-After wins
    backoff_s: float = ranged(1.0, ge=0)
    max_backoff_s: float = ranged(30.0, ge=0)
    concurrency: int = ranged(8, ge=1)  # requests in flight at once
    cache_dir: str | None = "outputs/autointerp/llm_cache"  # response cache; null = no cache
    # price of a million prompt tokens (cost in the summary)
    input_usd_per_mtok: float = ranged(0.0, ge=0)
    output_usd_per_mtok: float = ranged(0.0, ge=0)  # price of a million completion tokens


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
    max_terms: int = ranged(5, ge=1)  # tokens and bigrams in one explanation
    # stop once this fraction of the explanation peaks is covered
    coverage: float = ranged(0.9, gt=0, le=1)
    min_count: int = ranged(2, ge=1)  # a term must cover at least this many explanation peaks
    min_log_odds: float = ranged(0.7)  # a term must be at least e^0.7 ≈ 2× enriched at the peaks
    smoothing: float = ranged(1.0, gt=0)  # additive smoothing of the counts


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
    features: int = ranged(200, ge=1)  # random live features explained and scored
    replica: int = ranged(0, ge=0)  # which of the run's replicas
    # feature sampling, stratified examples and scoring order
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    label: str | None = None  # encoder name in the report; null = from the run's config
    device: Any = MISSING  # device=auto|cpu|cuda|mps, device.threads (torch threads on CPU)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    explainer: Any = MISSING
    scorer: Any = MISSING
    logger: Any = MISSING  # wandb (offline by default) | none


def register_configs() -> None:
    """Store every option of the config groups under the name users select (as
    ``sparsegap.registry`` does for ``python -m sparsegap``): ``explainer=llm|ngram``,
    ``scorer=llm|rule``, ``logger=wandb|none`` and ``device=<name>`` are the schemas themselves,
    so no option is a bare schema and no YAML shadows a stored node (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="autointerp_schema", node=AutointerpConfig)  # the root of config.yaml
    options = {
        "explainer": {"llm": LLMExplainerConfig, "ngram": NgramExplainerConfig},
        "scorer": {"llm": LLMScorerConfig, "rule": RuleScorerConfig},
        "logger": {name: LoggerConfig(name=name) for name in LOGGERS},
        "device": {name: DeviceConfig(name=name) for name in DEVICES},
    }
    for group, nodes in options.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)


def validate(cfg: DictConfig) -> None:
    """Checks Hydra's type checks cannot express, before any model is loaded."""

    choice("explainer.name", cfg.explainer.name, EXPLAINERS)
    choice("scorer.name", cfg.scorer.name, SCORERS)
    choice("device.name", cfg.device.name, DEVICES)
    if cfg.device.name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda is invalid: no CUDA GPU is visible here; use cpu or auto")
    check_schema(cfg)  # every field's declared range, no key outside the schema
    need(
        cfg.corpus.tokens >= cfg.corpus.context,
        "corpus.tokens",
        cfg.corpus.tokens,
        f"must be at least corpus.context={cfg.corpus.context}",
    )
    choice("logger.name", cfg.logger.name, LOGGERS)
    if cfg.logger.name == "wandb":
        choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
