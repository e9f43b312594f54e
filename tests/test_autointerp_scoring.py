"""Autointerp without an LLM: examples, metrics, parsing, and the n-gram calibration."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from autointerp_helpers import VOCAB, compose_cfg, documents, planted_source

from sparsegap.autointerp.examples import select_examples
from sparsegap.autointerp.explainer import Explanation, parse_explanation, render
from sparsegap.autointerp.ngram import RuleScorer, format_terms, parse_terms
from sparsegap.autointerp.pipeline import held_out_tokens, interpret
from sparsegap.autointerp.scorer import classification, parse_labels
from sparsegap.config import ConfigError


def planted_run(overrides: list[str] | None = None):
    cfg = compose_cfg(["explainer=ngram", "scorer=rule", "features=20", *(overrides or [])])
    source = planted_source()
    tokens = held_out_tokens(cfg, source, documents())
    return cfg, source, tokens, *interpret(cfg, source, tokens, client=None)


def test_always_yes_gets_two_thirds_f1_but_chance_balanced_accuracy():
    labels = [1] * 5 + [0] * 5
    m = classification(labels, [1] * 10)
    assert m["f1"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == 0.5
    m = classification(labels, [0] * 10)
    assert m["f1"] == 0 and m["balanced_accuracy"] == 0.5
    m = classification(labels, [1, 1, 1, 1, 0, 1, 0, 0, 0, 0])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 1, 1, 4)
    assert m["f1"] == pytest.approx(0.8) and m["balanced_accuracy"] == pytest.approx(0.8)


def test_reply_parsing():
    assert parse_explanation("thinking…\n[EXPLANATION]: the word cat") == "the word cat"
    assert parse_explanation("[explanation] : numbers\n") == "numbers"
    assert parse_explanation("it is about cats") is None
    assert parse_explanation("[EXPLANATION]:   ") is None
    assert parse_labels("Sure: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_labels("[1, 0] then ['1', '0', '0']", 3) == [1, 0, 0]
    assert parse_labels("[1, 0, 2]", 3) is None
    assert parse_labels("[1, 0]", 3) is None
    assert parse_labels("yes, no, yes", 3) is None
    assert render(["a", " b", " c", " d"], {1, 2}) == "a<< b c>> d"
    assert render(["a\n", "b"], {1}) == "a\\n<<b>>"


def test_ngram_explanations_round_trip_through_text():
    terms = [(' "quoted"',), (" a", " mat"), ("é, ok",)]
    text = format_terms(terms)
    assert text == 'Fires on " \\"quoted\\"", " mat" after " a", "é, ok"'
    assert parse_terms(text) == terms
    assert parse_terms(format_terms([])) == []
    assert parse_terms("The feature fires on cats") is None


def test_explanation_and_scoring_examples_are_disjoint_and_labelled():
    g = torch.Generator().manual_seed(1)
    acts = torch.rand(60, 8, generator=g) * (torch.rand(60, 8, generator=g) < 0.05)
    tokens = torch.randint(0, 40, (60, 8), generator=g)
    for feature in range(20):
        ex = select_examples(
            feature, acts, tokens, explain_top=10, explain_sampled=10, quantiles=5,
            score_activating=5, score_non_activating=5, seed=feature,
        )  # fmt: skip
        ex.check_disjoint()
        explain = {e.context for e in ex.explain}
        score = {e.context for e in ex.score}
        assert not explain & score
        assert len(score) == 10 and sum(ex.labels) == 5
        peaks = acts.amax(dim=1)
        top = set(torch.argsort(-peaks, stable=True)[:10].tolist())
        assert top <= explain  # the ten strongest contexts are the explainer's
        for e, y in zip(ex.score, ex.labels, strict=True):
            assert y == int(peaks[e.context] > 0)
            if y:
                assert e.activations[e.marked] == e.peak


def test_planted_features_true_explanations_score_high_shuffled_near_chance():
    _, source, _, results, summary = planted_run()
    assert summary["features"] == 20 and summary["scored"] == 20
    for r in results:
        word = VOCAB[r.examples.feature]
        assert parse_terms(r.explanation.text) == [(word,)], r.explanation.text
        r.examples.check_disjoint()
    f1 = [r.score.metrics()["f1"] for r in results]
    assert min(f1) >= 0.9 and summary["f1_mean"] >= 0.9

    rng = random.Random(0)
    explanations = [r.explanation for r in results]
    balanced, f1_shuffled = [], []
    for _ in range(5):
        order = list(range(len(results)))
        while any(i == j for i, j in enumerate(order)):  # every feature gets another's
            rng.shuffle(order)
        scores = RuleScorer(source.vocab).score(
            [r.examples for r in results], [explanations[j] for j in order]
        )
        balanced += [s.metrics()["balanced_accuracy"] for s in scores]
        f1_shuffled += [s.metrics()["f1"] for s in scores]
    assert abs(statistics.fmean(balanced) - 0.5) < 0.1
    assert statistics.fmean(f1_shuffled) < 0.2


def test_unparseable_explanations_are_counted_never_scored():
    _, source, _, results, _ = planted_run(["features=3"])
    examples = [r.examples for r in results]
    scores = RuleScorer(source.vocab).score(
        examples,
        [Explanation("It likes cats."), Explanation(None, "timeout"), results[2].explanation],
    )
    assert [s.error for s in scores] == ["parse_failure", "no_explanation", None]
    assert scores[0].metrics() is None and scores[1].metrics() is None
    assert scores[2].metrics()["f1"] >= 0.9


def test_invalid_values_name_the_key_and_allowed_values():
    from sparsegap.autointerp.config import validate

    with pytest.raises(
        ConfigError, match=r"explainer.name='gpt' is invalid: allowed values are llm, ngram"
    ):
        validate(compose_cfg(["explainer.name=gpt"]))
    with pytest.raises(
        ConfigError, match=r"examples.score_activating=0 is invalid: must be at least 1"
    ):
        validate(compose_cfg(["examples.score_activating=0"]))


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path, monkeypatch):
    import os

    from sparsegap.tracking import write_text_atomic

    path = tmp_path / "summary.md"
    write_text_atomic(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new " * 10_000)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
