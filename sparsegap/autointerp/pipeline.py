"""One autointerp run, top to bottom: held-out contexts → live features → examples → logit
effects → explanations → scores → ``features.jsonl``, ``autointerp.json``, the report and W&B.

Works on plain tensors (``FeatureSource``); ``source.py`` builds one from a run folder.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sparsegap.autointerp.examples import (
    ActivationFn,
    Example,
    FeatureExamples,
    contexts_from_documents,
    feature_activations,
    firing_counts,
    sample_features,
    select_examples,
)
from sparsegap.autointerp.explainer import Explanation, LLMExplainer
from sparsegap.autointerp.llm import LLMClient, make_client
from sparsegap.autointerp.logits import LogitEffects, logit_effects
from sparsegap.autointerp.ngram import CorpusCounts, NgramExplainer, RuleScorer
from sparsegap.autointerp.scorer import LLMScorer, Score
from sparsegap.autointerp.secrets import redacted
from sparsegap.tracking import write_json_atomic, write_text_atomic

SUMMARY = "autointerp.json"  # marks an autointerp output folder
FEATURES = "features.jsonl"


@dataclass
class FeatureSource:
    """What autointerp needs from an encoder trained on a language model, as plain objects."""

    activations: ActivationFn  # token ids (b, T) → feature activations (b, T, L)
    directions: Tensor  # decoder directions (d_model, L)
    unembed: Tensor  # W_U (d_model, V)
    vocab: list[str]  # display string of each token id
    encode: Callable[[list[str]], list[list[int]]]  # texts → their token ids, no BOS
    separator: int | None  # token between documents (end of text)
    label: str  # encoder name in the report, e.g. sae, mlp-256


@dataclass
class FeatureResult:
    examples: FeatureExamples
    logits: LogitEffects
    explanation: Explanation
    score: Score

    def record(self, vocab: list[str]) -> dict[str, Any]:
        """One line of features.jsonl: everything needed to audit the feature's score."""

        def example(e: Example, label: int | None = None, prediction: int | None = None) -> dict:
            row = {
                "context": e.context,
                "tokens": [vocab[t] for t in e.tokens],
                "activations": [round(a, 4) for a in e.activations],
                "marked": e.marked,
            }
            if label is not None:
                row |= {"label": label, "prediction": prediction}
            return row

        predictions = self.score.predictions or [None] * len(self.examples.score)
        return {
            "feature": self.examples.feature,
            "explanation": self.explanation.text,
            "explanation_error": self.explanation.error,
            "score_error": self.score.error,
            "metrics": self.score.metrics(),
            "logits": {"top": self.logits.top, "bottom": self.logits.bottom},
            "explain_examples": [example(e) for e in self.examples.explain],
            "score_examples": [
                example(e, y, p)
                for e, y, p in zip(
                    self.examples.score, self.examples.labels, predictions, strict=True
                )
            ],
            "explainer_reply": self.explanation.reply,
            "scorer_reply": self.score.reply,
        }


def interpret(
    cfg: DictConfig, source: FeatureSource, tokens: Tensor, client: LLMClient | None
) -> tuple[list[FeatureResult], dict[str, Any]]:
    """Explain and score ``cfg.features`` random live features on the held-out ``tokens`` (S, T)."""
    ex = cfg.examples
    counts = firing_counts(tokens, source.activations, cfg.corpus.batch_size)
    needed = ex.explain_top + ex.score_activating
    most = tokens.shape[0] - ex.score_non_activating
    features = sample_features(counts, cfg.features, needed, most, cfg.seed)
    if not features:
        raise RuntimeError(
            f"no live feature: none of the {counts.numel()} latents fires in at least {needed}"
            f" (examples.explain_top + examples.score_activating) and at most {most} of the"
            f" {tokens.shape[0]} held-out contexts; scan more text (corpus.tokens)"
        )
    acts = feature_activations(tokens, source.activations, features, cfg.corpus.batch_size)
    examples = [
        select_examples(
            f, acts[i], tokens,
            explain_top=ex.explain_top, explain_sampled=ex.explain_sampled,
            quantiles=ex.quantiles, score_activating=ex.score_activating,
            score_non_activating=ex.score_non_activating, seed=cfg.seed,
        )
        for i, f in enumerate(features)
    ]  # fmt: skip
    for e in examples:
        e.check_disjoint()
    logits = logit_effects(
        source.directions[:, features], source.unembed, source.vocab, ex.logit_tokens
    )
    if cfg.explainer.name == "ngram":
        corpus = CorpusCounts.of(tokens, len(source.vocab))
        explainer: Any = NgramExplainer(cfg.explainer, corpus, source.vocab)
    else:
        assert client is not None
        explainer = LLMExplainer(client, source.vocab, ex.mark_fraction)
    explanations = explainer.explain(examples, logits)
    if cfg.scorer.name == "rule":
        scorer: Any = RuleScorer(source.vocab)
    else:
        assert client is not None
        scorer = LLMScorer(client, source.vocab)
    scores = scorer.score(examples, explanations)
    results = [FeatureResult(*r) for r in zip(examples, logits, explanations, scores, strict=True)]
    stats = {
        "held_out_contexts": tokens.shape[0],
        "held_out_tokens": tokens.numel(),
        "latents": counts.numel(),
        "live_latents": sum(1 for c in counts.tolist() if needed <= c <= most),
        "features": len(features),
    }
    return results, stats | outcome(results)


def outcome(results: list[FeatureResult]) -> dict[str, Any]:
    """Counts of explained, failed and scored features, and the score distribution's summary."""
    metrics = [m for r in results if (m := r.score.metrics()) is not None]
    summary: dict[str, Any] = {
        "explained": sum(r.explanation.text is not None for r in results),
        "explanation_failures": dict(
            Counter(r.explanation.error for r in results if r.explanation.error)
        ),
        "scored": len(metrics),
        "scoring_failures": dict(
            Counter(r.score.error for r in results if r.score.error not in (None, "no_explanation"))
        ),
    }
    for key in ("f1", "balanced_accuracy", "precision", "recall"):
        values = [m[key] for m in metrics]
        summary[f"{key}_mean"] = statistics.fmean(values) if values else float("nan")
        summary[f"{key}_median"] = statistics.median(values) if values else float("nan")
    return summary


def held_out_tokens(
    cfg: DictConfig, source: FeatureSource, documents: Iterable[str], skip_tokens: int = 0
) -> Tensor:
    """The held-out contexts (S, ``corpus.context``) from ``documents``."""
    return contexts_from_documents(
        documents, source.encode, source.separator, cfg.corpus.context, cfg.corpus.tokens,
        skip_tokens,
    )  # fmt: skip


def _start_wandb(cfg: DictConfig, out_dir: Path, name: str) -> Any:
    import wandb

    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=name,
        tags=[*cfg.logger.tags, "autointerp"],
        job_type="autointerp",
        mode=cfg.logger.mode,
        dir=os.environ.get("WANDB_DIR") or str(out_dir),
        config=redacted(OmegaConf.to_container(cfg, resolve=True)),  # type: ignore[arg-type]
        reinit="finish_previous",
    )


def _log_wandb(run: Any, summary: dict[str, Any], records: list[dict], figures: list[Path]) -> None:
    import wandb

    columns = ["feature", "explanation", "f1", "balanced_accuracy", "precision", "recall", "error"]
    table = wandb.Table(columns=columns)
    for r in records:
        m = r["metrics"] or {}
        error = r["explanation_error"] or r["score_error"]
        table.add_data(
            r["feature"], r["explanation"], m.get("f1"), m.get("balanced_accuracy"),
            m.get("precision"), m.get("recall"), error,
        )  # fmt: skip
    f1 = [r["metrics"]["f1"] for r in records if r["metrics"]]
    row: dict[str, Any] = {"features": table}
    if f1:
        row["f1_histogram"] = wandb.Histogram(f1)
    row |= {f"figures/{p.stem}": wandb.Image(str(p)) for p in figures if p.suffix == ".png"}
    run.log(row)
    for key, value in _flat(summary).items():
        run.summary[key] = value


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/")
        elif isinstance(v, int | float | str) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def execute(
    cfg: DictConfig,
    out_dir: Path,
    load: Callable[[], tuple[FeatureSource, Iterable[str], int]],
) -> dict[str, Any]:
    """Run and record one autointerp job into ``out_dir``; ``load`` gives the feature source,
    the held-out documents and how many of their tokens to skip. ``autointerp.json`` is
    ``running`` from the start and ends ``completed`` or ``failed`` with the error; every file is
    replaced atomically; the W&B run is always finished. Returns the summary."""
    from sparsegap.autointerp.report import make_report

    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.device.threads is not None:
        torch.set_num_threads(cfg.device.threads)
    started = time.time()
    config = redacted(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    state: dict[str, Any] = {"status": "running", "error": None, "config": config}
    write_json_atomic(out_dir / SUMMARY, state)
    wandb_run = None
    client: LLMClient | None = None
    error: BaseException | None = None
    try:
        if "llm" in (cfg.explainer.name, cfg.scorer.name):
            client = make_client(cfg.llm)  # before anything heavy: a missing key fails at once
        if cfg.logger.name == "wandb":
            wandb_run = _start_wandb(cfg, out_dir, f"autointerp-{Path(cfg.run).name}")
            state["wandb"] = {"id": wandb_run.id, "mode": cfg.logger.mode, "dir": wandb_run.dir}
        source, documents, skip_tokens = load()
        tokens = held_out_tokens(cfg, source, documents, skip_tokens)
        results, stats = interpret(cfg, source, tokens, client)
        records = [r.record(source.vocab) for r in results]
        write_text_atomic(
            out_dir / FEATURES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
        state |= {"label": cfg.label or source.label, **stats}
        state["llm_usage"] = client.usage.summary() if client is not None else None
        state["wall_time_s"] = time.time() - started
        state["status"] = "completed"
        write_json_atomic(out_dir / SUMMARY, state)
        report = make_report(out_dir)
        if wandb_run is not None:
            _log_wandb(
                wandb_run,
                {k: v for k, v in state.items() if k != "config"},
                records,
                report["figures"],
            )
        return state
    except BaseException as e:
        error = e
        state |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        state["wall_time_s"] = time.time() - started
        if client is not None:
            state["llm_usage"] = client.usage.summary()  # what was spent before the failure
        write_json_atomic(out_dir / SUMMARY, state)
        raise
    finally:
        torch.set_num_threads(threads)
        if wandb_run is not None:
            wandb_run.summary["status"] = state["status"]
            wandb_run.finish(exit_code=0 if error is None else 1)
