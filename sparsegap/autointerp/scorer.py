"""Scoring an explanation on held-out examples (paper App. H.2, in our words), and the per-feature
classification metrics.

The scorer sees the explanation and the scoring examples in shuffled order — activating and
non-activating alike — each with one token marked ``<<like this>>`` (the peak, or a random token
where the feature never fires), and answers with a list of 0/1, one per example. A reply that
does not hold exactly such a list is a failure: counted and reported, never scored.

Both F1 and balanced accuracy are reported: with 5 activating and 5 non-activating examples a
labeller that always says yes gets F1 = 2/3 but balanced accuracy 1/2.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sparsegap.autointerp.examples import FeatureExamples
from sparsegap.autointerp.explainer import Explanation, render
from sparsegap.autointerp.llm import LLMClient, Messages

SYSTEM = """\
You check an explanation of a language-model feature against new text. You get the explanation \
and a numbered list of excerpts; in each excerpt exactly one token is wrapped in double angle \
brackets, <<like this>>. For each excerpt decide, from the explanation alone, whether the \
feature fires on the marked token: 1 if it does, 0 if it does not. Some excerpts are positives \
and some are not; judge each on its own.

Answer with a single Python list of 0s and 1s, one entry per excerpt in order, and nothing \
else, e.g. [0, 1, 1, 0]."""

_LIST = re.compile(r"\[([^\[\]]*)\]")


@dataclass
class Score:
    """Labels (1 = fires) against the scorer's predictions for one feature."""

    labels: list[int]
    predictions: list[int] | None  # None when the scorer failed
    error: str | None = None  # the request's failure, parse_failure, or no_explanation
    reply: str | None = None

    def metrics(self) -> dict[str, float | int] | None:
        return None if self.predictions is None else classification(self.labels, self.predictions)


def classification(labels: list[int], predictions: list[int]) -> dict[str, float | int]:
    """Confusion counts, precision, recall, F1 and balanced accuracy (positives = fires).
    Precision is 0 when nothing is predicted positive, F1 0 when there is no true positive."""
    pairs = list(zip(labels, predictions, strict=True))
    tp = sum(1 for y, p in pairs if y and p)
    fp = sum(1 for y, p in pairs if not y and p)
    fn = sum(1 for y, p in pairs if y and not p)
    tn = sum(1 for y, p in pairs if not y and not p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "balanced_accuracy": (recall + specificity) / 2,
        "accuracy": (tp + tn) / len(pairs),
    }  # fmt: skip


def score_prompt(explanation: str, examples: FeatureExamples, vocab: list[str]) -> Messages:
    lines = [f"Explanation: {explanation}", "", "Excerpts:"]
    for n, e in enumerate(examples.score, 1):
        lines.append(f"{n}. {render([vocab[t] for t in e.tokens], {e.marked})}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def parse_labels(reply: str, n: int) -> list[int] | None:
    """The last bracketed list in ``reply`` of exactly ``n`` entries, each 0 or 1; else None."""
    for inside in reversed(_LIST.findall(reply)):
        items = [s.strip().strip("'\"") for s in inside.split(",")]
        if len(items) == n and all(s in ("0", "1") for s in items):
            return [int(s) for s in items]
    return None


def _labels_check(n: int) -> Callable[[str], bool]:
    return lambda text: parse_labels(text, n) is not None


class LLMScorer:
    def __init__(self, client: LLMClient, vocab: list[str]) -> None:
        self.client, self.vocab = client, vocab

    def score(
        self, examples: list[FeatureExamples], explanations: list[Explanation]
    ) -> list[Score]:
        todo = [i for i, x in enumerate(explanations) if x.text is not None]
        prompts = [score_prompt(explanations[i].text, examples[i], self.vocab) for i in todo]  # type: ignore[arg-type]
        parses = [_labels_check(len(examples[i].score)) for i in todo]
        replies = dict(zip(todo, self.client.complete_many(prompts, parses), strict=True))
        out = []
        for i, e in enumerate(examples):
            reply = replies.get(i)
            if reply is None:
                out.append(Score(e.labels, None, "no_explanation"))
            elif reply.text is None:
                out.append(Score(e.labels, None, reply.error))
            else:
                predictions = parse_labels(reply.text, len(e.score))
                error = None if predictions is not None else "parse_failure"
                out.append(Score(e.labels, predictions, error, reply.text))
        return out
