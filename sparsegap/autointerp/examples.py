"""Activation records: held-out contexts, live features, and each feature's explanation and
scoring examples.

The held-out text is a token matrix (S, T): S contexts of T tokens. A feature *fires* in a
context when its activation is > 0 at some token. Per feature, the explainer sees the top
activating contexts plus a quantile-stratified sample of the others; the scorer sees further
activating contexts (stratified over the same quantiles) and contexts where the feature never
fires. The two sets never share a context (``FeatureExamples.check_disjoint``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# tokens (b, T) -> activations (b, T, L) of every latent
ActivationFn = Callable[[Tensor], Tensor]


@dataclass
class Example:
    """One context as the explainer or scorer sees it."""

    context: int  # row of the held-out token matrix
    tokens: list[int]
    activations: list[float]  # the feature's activation at each token
    marked: int  # position of the labelled token: the peak, or a random one when it never fires

    @property
    def peak(self) -> float:
        return max(self.activations)

    @property
    def fires(self) -> bool:
        return self.peak > 0


@dataclass
class FeatureExamples:
    feature: int
    explain: list[Example]  # top-activating first, then the stratified sample
    score: list[Example]  # activating and non-activating, shuffled
    labels: list[int] = field(init=False)  # 1 where the scoring example fires

    def __post_init__(self) -> None:
        self.labels = [int(e.fires) for e in self.score]

    def check_disjoint(self) -> None:
        shared = {e.context for e in self.explain} & {e.context for e in self.score}
        if shared:
            raise AssertionError(f"feature {self.feature}: contexts {sorted(shared)} in both sets")


def contexts_from_documents(
    documents: Iterable[str],
    encode: Callable[[list[str]], list[list[int]]],
    separator: int | None,
    context: int,
    tokens: int,
    skip_tokens: int = 0,
) -> Tensor:
    """Tokenise documents into one stream (``separator`` between documents) and cut it into
    contexts of ``context`` tokens, up to ``tokens`` tokens in all: a (S, context) int64 matrix.
    Whole documents are skipped first until ``skip_tokens`` tokens have gone by."""
    wanted = max(tokens // context, 1) * context
    stream: list[int] = []
    skipped = 0
    it = iter(documents)
    while len(stream) < wanted and (chunk := list(itertools.islice(it, 64))):
        for ids in encode(chunk):
            if skipped < skip_tokens:
                skipped += len(ids)
                continue
            if separator is not None and stream:
                stream.append(separator)
            stream.extend(ids)
    usable = min(len(stream), wanted) // context * context
    if usable == 0:
        raise ValueError(
            f"the corpus holds {len(stream)} tokens, fewer than one context ({context})"
        )
    return torch.tensor(stream[:usable], dtype=torch.long).view(-1, context)


@torch.no_grad()
def firing_counts(tokens: Tensor, activations: ActivationFn, batch_size: int) -> Tensor:
    """Number of contexts in which each latent fires: (L,) int64."""
    counts: Tensor | None = None
    for start in range(0, tokens.shape[0], batch_size):
        fired = (activations(tokens[start : start + batch_size]) > 0).any(dim=1).sum(dim=0)
        counts = fired.cpu() if counts is None else counts + fired.cpu()
    assert counts is not None
    return counts


@torch.no_grad()
def feature_activations(
    tokens: Tensor, activations: ActivationFn, features: Sequence[int], batch_size: int
) -> Tensor:
    """Activations of the chosen latents at every held-out token: (F, S, T) float32."""
    index = torch.as_tensor(list(features), dtype=torch.long)
    parts = []
    for start in range(0, tokens.shape[0], batch_size):
        acts = activations(tokens[start : start + batch_size])
        parts.append(acts[..., index.to(acts.device)].float().cpu())
    return torch.cat(parts, dim=0).permute(2, 0, 1).contiguous()


def sample_features(
    counts: Tensor, n: int, min_contexts: int, max_contexts: int, seed: int
) -> list[int]:
    """Up to ``n`` random live latents (sorted): those firing in at least ``min_contexts`` and at
    most ``max_contexts`` contexts (the rest must leave enough non-firing contexts to score)."""
    live = ((counts >= min_contexts) & (counts <= max_contexts)).nonzero().flatten().tolist()
    rng = random.Random(seed)
    return sorted(rng.sample(live, min(n, len(live))))


def stratified(ranked: list[int], k: int, quantiles: int, rng: random.Random) -> list[int]:
    """``k`` items from ``ranked`` (highest activation first), spread over ``quantiles`` equal
    bins: one random item per bin in turn, from the top bin down."""
    bins = [list(b) for b in np.array_split(np.asarray(ranked, dtype=np.int64), quantiles)]
    bins = [[int(i) for i in b] for b in bins if len(b)]
    for b in bins:
        rng.shuffle(b)
    chosen: list[int] = []
    while len(chosen) < min(k, len(ranked)):
        for b in bins:
            if b and len(chosen) < k:
                chosen.append(b.pop())
    return chosen


def _example(context: int, tokens: Tensor, acts: Tensor, marked: int) -> Example:
    return Example(context, tokens[context].tolist(), acts[context].tolist(), marked)


def select_examples(
    feature: int,
    acts: Tensor,
    tokens: Tensor,
    *,
    explain_top: int,
    explain_sampled: int,
    quantiles: int,
    score_activating: int,
    score_non_activating: int,
    seed: int,
) -> FeatureExamples:
    """Explanation and scoring examples of one feature from its activations ``acts`` (S, T).

    Scoring takes its activating contexts first, from below the top ``explain_top``, so it always
    gets its ``score_activating``; the explainer's stratified sample comes from what is left.
    """
    rng = random.Random(seed * 1_000_003 + feature)
    peaks = acts.amax(dim=1)
    order = torch.argsort(-peaks, stable=True)
    fires = peaks[order] > 0
    firing, silent = order[fires].tolist(), order[~fires].tolist()
    if len(firing) < explain_top + score_activating or len(silent) < score_non_activating:
        raise ValueError(
            f"feature {feature} fires in {len(firing)} and is silent in {len(silent)} contexts;"
            f" needs {explain_top + score_activating} and {score_non_activating}"
        )
    top, rest = firing[:explain_top], firing[explain_top:]
    scored = stratified(rest, score_activating, quantiles, rng)
    taken = set(scored)
    left = [c for c in rest if c not in taken]
    sampled = stratified(left, explain_sampled, quantiles, rng)
    negatives = rng.sample(silent, score_non_activating)
    peak_at = acts.argmax(dim=1).tolist()
    explain = [_example(c, tokens, acts, peak_at[c]) for c in [*top, *sampled]]
    score = [_example(c, tokens, acts, peak_at[c]) for c in scored]
    score += [_example(c, tokens, acts, rng.randrange(tokens.shape[1])) for c in negatives]
    rng.shuffle(score)
    return FeatureExamples(feature, explain, score)
