"""sparsegap.data.make_synthetic: shapes, sparsity, dictionary, noise, seeding, laws, support."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from sparsegap.config import MAGNITUDES, DataConfig
from sparsegap.data import SyntheticData, make_synthetic
from sparsegap.data.synthetic import sample_magnitudes

SMALL = DataConfig(N=12, M=6, K=4, train_samples=300, test_samples=200, seed=3)


def _tensors(data: SyntheticData) -> dict[str, torch.Tensor]:
    return {f.name: getattr(data, f.name) for f in fields(data)}


def _all_codes(data: SyntheticData) -> torch.Tensor:
    return torch.cat([data.codes_train, data.codes_test], dim=1)


def test_shapes_and_dtype() -> None:
    data = make_synthetic(SMALL)
    assert data.x_train.shape == (6, 300)
    assert data.x_test.shape == (6, 200)
    assert data.codes_train.shape == (12, 300)
    assert data.codes_test.shape == (12, 200)
    assert data.dictionary.shape == (6, 12)
    for t in _tensors(data).values():
        assert t.dtype == torch.float32
        assert t.is_contiguous()


def test_paper_defaults() -> None:
    data = make_synthetic(DataConfig())
    assert data.x_train.shape == (8, 1024)
    assert data.codes_test.shape == (16, 1024)
    assert ((_all_codes(data) != 0).sum(dim=0) == 3).all()


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_exactly_k_nonzeros_per_sample(magnitude: str) -> None:
    cfg = DataConfig(N=12, M=6, K=4, train_samples=300, test_samples=200, magnitude=magnitude)
    counts = (_all_codes(make_synthetic(cfg)) != 0).sum(dim=0)
    assert counts.shape == (500,)
    assert (counts == 4).all()


def test_k_equals_n_is_dense() -> None:
    cfg = DataConfig(N=5, M=3, K=5, train_samples=20, test_samples=20)
    assert (_all_codes(make_synthetic(cfg)) != 0).all()


def test_dictionary_unit_norm_columns() -> None:
    d = make_synthetic(SMALL).dictionary
    torch.testing.assert_close(d.norm(dim=0), torch.ones(12), rtol=0, atol=1e-6)
    # Not trivially degenerate: atoms differ from each other.
    gram = d.T @ d
    assert (gram - torch.eye(12)).abs().max() < 0.999


def test_x_is_dictionary_times_codes_without_noise() -> None:
    data = make_synthetic(SMALL)
    torch.testing.assert_close(data.x_train, data.dictionary @ data.codes_train, rtol=0, atol=1e-6)
    torch.testing.assert_close(data.x_test, data.dictionary @ data.codes_test, rtol=0, atol=1e-6)


def test_noise_std() -> None:
    cfg = DataConfig(N=16, M=8, K=3, train_samples=2048, test_samples=2048, noise_std=0.1, seed=1)
    data = make_synthetic(cfg)
    d = data.dictionary
    residual = torch.cat(
        [data.x_train - d @ data.codes_train, data.x_test - d @ data.codes_test], dim=1
    ).double()
    n = residual.numel()  # 32,768 draws: the std's standard error is ~0.4 %
    assert residual.std().item() == pytest.approx(0.1, rel=0.03)
    assert abs(residual.mean().item()) < 5 * 0.1 / math.sqrt(n)
    # Same seed without noise: identical codes and dictionary, only X changes.
    clean = make_synthetic(DataConfig(**{**vars(cfg), "noise_std": 0.0}))
    torch.testing.assert_close(clean.codes_train, data.codes_train, rtol=0, atol=0)
    torch.testing.assert_close(clean.dictionary, data.dictionary, rtol=0, atol=0)


def test_same_seed_identical_different_seed_different() -> None:
    a, b = make_synthetic(SMALL), make_synthetic(SMALL)
    other = make_synthetic(DataConfig(**{**vars(SMALL), "seed": SMALL.seed + 1}))
    for name, t in _tensors(a).items():
        assert torch.equal(t, getattr(b, name)), name
        assert not torch.equal(t, getattr(other, name)), name


def test_does_not_touch_global_rng() -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    first = make_synthetic(SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)
    # And the result does not depend on the global state either.
    torch.manual_seed(999)
    second = make_synthetic(SMALL)
    assert torch.equal(first.x_train, second.x_train)
    assert torch.equal(first.codes_test, second.codes_test)


def test_train_and_test_are_different_draws() -> None:
    data = make_synthetic(DataConfig(N=8, M=4, K=2, train_samples=50, test_samples=50))
    assert not torch.equal(data.codes_train, data.codes_test)


def _active_values(magnitude: str, seed: int = 0) -> torch.Tensor:
    cfg = DataConfig(
        N=16, M=8, K=3, train_samples=2048, test_samples=2048, magnitude=magnitude, seed=seed
    )
    codes = _all_codes(make_synthetic(cfg))
    values = codes[codes != 0].double()
    assert values.numel() == 3 * 4096
    return values


def test_magnitude_abs_normal() -> None:
    v = _active_values("abs_normal")
    assert (v > 0).all()
    assert v.mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.03)  # E|N(0,1)|


def test_magnitude_normal_has_both_signs() -> None:
    v = _active_values("normal")
    assert (v < 0).any() and (v > 0).any()
    assert (v < 0).double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert v.mean().item() == pytest.approx(0.0, abs=0.05)
    assert v.std().item() == pytest.approx(1.0, abs=0.05)


def test_magnitude_exponential() -> None:
    v = _active_values("exponential")
    assert (v > 0).all()
    # 12,288 draws: the mean's standard error is ~0.009; |N(0,1)| would give 0.80.
    assert v.mean().item() == pytest.approx(1.0, abs=0.05)
    assert v.std().item() == pytest.approx(1.0, abs=0.05)


def test_magnitude_uniform() -> None:
    v = _active_values("uniform")
    assert (v > 0).all()
    assert (v <= 1).all()
    assert v.mean().item() == pytest.approx(0.5, abs=0.02)
    assert v.min().item() < 0.01 and v.max().item() > 0.99


def test_unknown_magnitude_raises() -> None:
    with pytest.raises(ValueError, match="unknown magnitude"):
        sample_magnitudes("cauchy", (3,), torch.Generator().manual_seed(0))


def test_support_positions_uniform() -> None:
    n, k, samples = 16, 3, 20_000
    cfg = DataConfig(N=n, M=8, K=k, train_samples=samples - 100, test_samples=100, seed=11)
    active = _all_codes(make_synthetic(cfg)) != 0
    counts = active.sum(dim=1).double()  # how often each position is in the support
    p = k / n
    expected = samples * p
    se = math.sqrt(samples * p * (1 - p))
    assert counts.sum().item() == k * samples
    assert ((counts - expected).abs() < 5 * se).all(), (counts, expected, se)
    # Pairs too: positions are chosen jointly without replacement, uniformly over K-subsets, so
    # each pair (i, j) co-occurs with probability K(K-1) / (N(N-1)).
    pair = (active.double() @ active.double().T)[~torch.eye(n, dtype=torch.bool)]
    p2 = k * (k - 1) / (n * (n - 1))
    se2 = math.sqrt(samples * p2 * (1 - p2))
    assert ((pair - samples * p2).abs() < 5 * se2).all()
