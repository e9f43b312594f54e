"""Streamed synthetic training (``data.stream_batch``): batches drawn on the fly, never the set."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, read_metrics

from sparsegap.__main__ import run
from sparsegap.config import ConfigError
from sparsegap.model import build
from sparsegap.step import make_step
from sparsegap.validate import validate

HUGE = ["data.stream_batch=256", "data.train_samples=100000000", "data.test_samples=512"]


def test_a_huge_training_set_is_never_materialised():
    model = build(compose_config([*HUGE, "replicas=1"]))
    assert model.data.x_train.shape == (8, 256)  # only the first batch, for train metrics
    assert model.data.x_test.shape == (8, 512)
    step = make_step(model)
    before = model.decoder.weight.detach().clone()
    for _ in range(3):
        step()
    assert step.samples == 3 * 256
    assert not torch.equal(before, model.decoder.weight)


@pytest.mark.parametrize("scenario", ["known_codes", "unknown"])
def test_streamed_training_learns(tmp_path, scenario):
    overrides = [*HUGE, f"scenario={scenario}", "steps=400", "eval_every=200", "replicas=2"]
    run(compose_config(overrides), tmp_path)
    first, last = read_metrics(tmp_path)[0], read_metrics(tmp_path)[-1]
    assert last["loss/total/train"]["mean"] < first["loss/total/train"]["mean"]
    assert last["latent_mcc/test"]["mean"] > first["latent_mcc/test"]["mean"]


def test_each_step_sees_the_next_batch_and_epochs_repeat():
    model = build(compose_config(["data.stream_batch=100", "data.train_samples=250"]))
    step = make_step(model)
    seen = [next(step.batches) for _ in range(4)]
    assert [x.shape[1] for x, _ in seen] == [100, 100, 50, 100]
    assert torch.equal(seen[0][0], seen[3][0]) and torch.equal(seen[0][1], seen[3][1])
    assert not torch.equal(seen[0][0], seen[1][0])
    # the first batch is the one held for train-split metrics; the true codes explain x
    assert torch.equal(seen[0][0], model.data.x_train)
    assert torch.allclose(model.data.dictionary @ seen[1][1], seen[1][0], atol=1e-5)


def test_per_sample_encoders_refuse_streaming():
    with pytest.raises(ConfigError, match=r"data.stream_batch=64.*per\s+sample"):
        validate(compose_config(["encoder=sparse_coding", "data.stream_batch=64"]))
    with pytest.raises(ConfigError, match=r"data\.stream_batch"):
        validate(compose_config(["data.stream_batch=-1"]))
