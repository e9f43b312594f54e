"""Offline mode, no LLM: an n-gram explainer and a rule scorer.

The explainer looks at the peak token of each explanation example (and the token before it) and
picks, greedily, the tokens and (previous token, token) bigrams that best separate the peaks from
the held-out corpus: log-odds log[p(term | peak) / p(term | corpus)] (additively smoothed), each
step taking the term with the largest (newly covered peaks × log-odds), until ``coverage`` of the
peaks is covered or ``max_terms`` are chosen. Its explanation is plain text that quotes each
token as a JSON string — ``Fires on " cat", " mat" after " a"`` — so the rule scorer (and a
reader) can apply it to new text: an example is labelled 1 when its marked token, with the token
before it, matches a quoted term. This is the calibration baseline of the LLM path (Gao et al.
2024 use n-gram explanations the same way).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from sparsegap.autointerp.examples import Example, FeatureExamples
from sparsegap.autointerp.explainer import Explanation
from sparsegap.autointerp.scorer import Score

PREFIX = "Fires on "
NOTHING = "Fires on no recurring token."
_STRING = r'"(?:[^"\\]|\\.)*"'
_TERM = re.compile(rf"({_STRING})(?:\s+after\s+({_STRING}))?")

Term = tuple[str, ...]  # (token,) or (previous token, token)


def format_terms(terms: list[Term]) -> str:
    if not terms:
        return NOTHING
    quoted = [
        json.dumps(t[-1], ensure_ascii=False)
        + (f" after {json.dumps(t[0], ensure_ascii=False)}" if len(t) == 2 else "")
        for t in terms
    ]
    return PREFIX + ", ".join(quoted)


def parse_terms(text: str) -> list[Term] | None:
    """The terms quoted in an n-gram explanation; None when ``text`` is not one."""
    if text.strip() == NOTHING:
        return []
    if not text.startswith(PREFIX):
        return None
    terms: list[Term] = []
    for token, previous in _TERM.findall(text[len(PREFIX) :]):
        terms.append(
            (json.loads(previous), json.loads(token)) if previous else (json.loads(token),)
        )
    return terms or None


@dataclass
class CorpusCounts:
    """Token and within-context bigram counts of the held-out token matrix (by token id)."""

    unigrams: np.ndarray  # (V,)
    bigrams: Counter[tuple[int, int]]
    tokens: int

    @classmethod
    def of(cls, tokens: Tensor, vocab_size: int) -> CorpusCounts:
        ids = tokens.numpy()
        unigrams = np.bincount(ids.ravel(), minlength=vocab_size)
        codes = ids[:, :-1].astype(np.int64) * vocab_size + ids[:, 1:]
        values, counts = np.unique(codes.ravel(), return_counts=True)
        bigrams = Counter(
            {
                (int(v) // vocab_size, int(v) % vocab_size): int(c)
                for v, c in zip(values, counts, strict=True)
            }
        )
        return cls(unigrams, bigrams, int(ids.size))


def _peak_terms(e: Example) -> list[tuple[int, ...]]:
    t = e.tokens[e.marked]
    return [(t,), (e.tokens[e.marked - 1], t)] if e.marked > 0 else [(t,)]


class NgramExplainer:
    def __init__(self, cfg: Any, counts: CorpusCounts, vocab: list[str]) -> None:
        self.cfg, self.counts, self.vocab = cfg, counts, vocab

    def _log_odds(self, term: tuple[int, ...], hits: int, peaks: int) -> float:
        a = self.cfg.smoothing
        if len(term) == 1:
            corpus = int(self.counts.unigrams[term[0]])
        else:
            corpus = self.counts.bigrams.get(term, 0)
        return math.log((hits + a) / (peaks + a)) - math.log(
            (corpus + a) / (self.counts.tokens + a)
        )

    def terms(self, examples: FeatureExamples) -> list[Term]:
        cfg = self.cfg
        covers: dict[tuple[int, ...], set[int]] = {}
        for i, e in enumerate(examples.explain):
            for term in _peak_terms(e):
                covers.setdefault(term, set()).add(i)
        peaks = len(examples.explain)
        odds = {t: self._log_odds(t, len(c), peaks) for t, c in covers.items()}
        uncovered = set(range(peaks))
        chosen: list[tuple[int, ...]] = []
        while len(chosen) < cfg.max_terms and len(uncovered) > (1 - cfg.coverage) * peaks:
            best, best_gain = None, 0.0
            for term in sorted(covers):
                new = len(covers[term] & uncovered)
                if new < cfg.min_count or odds[term] < cfg.min_log_odds:
                    continue
                if new * odds[term] > best_gain:
                    best, best_gain = term, new * odds[term]
            if best is None:
                break
            chosen.append(best)
            uncovered -= covers[best]
        return [tuple(self.vocab[t] for t in term) for term in chosen]

    def explain(self, examples: list[FeatureExamples], logits: Any = None) -> list[Explanation]:
        return [Explanation(format_terms(self.terms(e))) for e in examples]


class RuleScorer:
    """Applies an n-gram explanation to the scoring examples' marked tokens."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def predict(self, terms: list[Term], e: Example) -> int:
        token = self.vocab[e.tokens[e.marked]]
        previous = self.vocab[e.tokens[e.marked - 1]] if e.marked > 0 else None
        return int(any(t == (token,) or t == (previous, token) for t in terms))

    def score(
        self, examples: list[FeatureExamples], explanations: list[Explanation]
    ) -> list[Score]:
        out = []
        for e, x in zip(examples, explanations, strict=True):
            if x.text is None:
                out.append(Score(e.labels, None, "no_explanation"))
                continue
            terms = parse_terms(x.text)
            if terms is None:
                out.append(Score(e.labels, None, "parse_failure"))
                continue
            out.append(Score(e.labels, [self.predict(terms, s) for s in e.score]))
        return out
