"""Synthetic data laws beyond the paper's: Bernoulli/Zipf supports, copula correlation,
hierarchies, magnitudes, importance, dictionaries, SNR, streaming, and their validation."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields, replace

import pytest
import torch
from helpers import compose_config

from sparsegap.config import ConfigError, DataConfig
from sparsegap.data import SyntheticStream, coherence, make_synthetic
from sparsegap.data.laws import firing_probabilities, hierarchy, implied_firing_correlation
from sparsegap.validate import validate

BERN = DataConfig(N=64, M=16, K=4, train_samples=10_000, test_samples=10_000, support="bernoulli")


def _codes(cfg: DataConfig) -> torch.Tensor:
    data = make_synthetic(cfg)
    return torch.cat([data.codes_train, data.codes_test], dim=1)


def test_default_is_the_papers_data_bit_for_bit() -> None:
    """The original generator, inlined: the new options must not change a single draw."""
    cfg = DataConfig(N=12, M=6, K=4, train_samples=30, test_samples=20, noise_std=0.1, seed=5)
    g = torch.Generator().manual_seed(5)
    d = torch.randn(6, 12, generator=g)
    d /= d.norm(dim=0, keepdim=True)
    support = torch.rand(50, 12, generator=g).argsort(dim=1)[:, :4]
    values = torch.randn((50, 4), generator=g).abs_()
    codes = torch.zeros(50, 12).scatter_(1, support, values).T.contiguous()
    x = d @ codes
    x += 0.1 * torch.randn(x.shape, generator=g)
    data = make_synthetic(cfg)
    assert torch.equal(data.dictionary, d)
    assert torch.equal(data.codes_train, codes[:, :30]) and torch.equal(
        data.codes_test, codes[:, 30:]
    )
    assert torch.equal(data.x_train, x[:, :30]) and torch.equal(data.x_test, x[:, 30:])
    assert torch.equal(data.importance, torch.ones(12))


@pytest.mark.parametrize("frequencies", ["uniform", "zipf"])
def test_bernoulli_expected_l0_is_k(frequencies: str) -> None:
    cfg = replace(BERN, frequencies=frequencies, zipf_exponent=1.0, seed=2)
    l0 = (_codes(cfg) != 0).sum(dim=0).double()
    se = l0.std().item() / math.sqrt(l0.numel())
    assert abs(l0.mean().item() - 4) < 3 * se, (l0.mean().item(), se)
    assert l0.std().item() > 0.5  # not a fixed support
    p, _ = firing_probabilities(cfg)
    assert p.sum().item() == pytest.approx(4.0)


def test_zipf_exponent_recovered_by_log_log_fit() -> None:
    cfg = replace(
        BERN, K=2, frequencies="zipf", zipf_exponent=1.0, train_samples=50_000, test_samples=50_000
    )
    freq = (_codes(cfg) != 0).double().mean(dim=1)
    assert (freq > 0).all()
    x = torch.arange(1, 65, dtype=torch.float64).log()
    y = freq.log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()
    assert -slope.item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("exclusive", [False, True])
def test_hierarchy_never_violated_and_marginals_hold(exclusive: bool) -> None:
    cfg = replace(BERN, hierarchy_depth=2, hierarchy_branching=3, hierarchy_exclusive=exclusive)
    active = _codes(cfg) != 0
    parent, level = hierarchy(64, 2, 3)
    assert (level == 0).nonzero().squeeze(1)[:3].tolist() == [0, 13, 26]  # trees of 1 + 3 + 9
    assert parent[1:4].tolist() == [0, 0, 0] and parent[4:7].tolist() == [1, 1, 1]
    child = parent >= 0
    # a child fires only where its parent fires
    assert not (active[child] & ~active[parent[child]]).any()
    assert (active[child].sum(dim=1) > 0).all()  # and children do fire
    siblings = torch.zeros(64, active.shape[1], dtype=torch.long)
    siblings.index_add_(0, parent[child], active[child].long())
    if exclusive:
        assert siblings.max().item() == 1
    else:
        assert siblings.max().item() >= 2
    _, marginal = firing_probabilities(cfg)
    freq = active.double().mean(dim=1)
    se = (marginal * (1 - marginal) / active.shape[1]).sqrt()
    assert ((freq - marginal).abs() < 5 * se + 1e-9).all()
    l0 = active.sum(dim=0).double()
    assert abs(l0.mean().item() - 4) < 3 * l0.std().item() / math.sqrt(l0.numel())


def test_copula_firing_correlation_matches_the_implied_value() -> None:
    """Features sharing a factor (i mod rank) have latent correlation s: their firing indicators
    must correlate as Φ₂ implies; features on different factors are independent."""
    s, n = 0.6, 8
    cfg = replace(
        BERN,
        N=n,
        K=2,
        correlation_rank=2,
        correlation_scale=s,
        train_samples=50_000,
        test_samples=50_000,
    )
    active = (_codes(cfg) != 0).double()
    freq = active.mean(dim=1)
    assert torch.allclose(freq, torch.full((n,), 0.25, dtype=torch.float64), atol=0.01)
    corr = torch.corrcoef(active)
    target = implied_firing_correlation(0.25, 0.25, s)
    assert 0.3 < target < 0.5
    same = (torch.arange(n)[:, None] % 2 == torch.arange(n)[None, :] % 2) & ~torch.eye(
        n, dtype=torch.bool
    )
    other = torch.arange(n)[:, None] % 2 != torch.arange(n)[None, :] % 2
    assert (corr[same] - target).abs().max().item() < 0.02  # SE of one correlation ≈ 0.003
    assert corr[other].abs().max().item() < 0.02
    # stronger latent correlation, stronger firing correlation
    weaker = replace(cfg, correlation_scale=0.3)
    corr_w = torch.corrcoef((_codes(weaker) != 0).double())
    assert corr_w[same].mean() < corr[same].mean()


@pytest.mark.parametrize(("kind", "target"), [("mean", 0.4), ("max", 0.8)])
def test_coherent_dictionary_hits_its_target(kind: str, target: float) -> None:
    cfg = DataConfig(
        N=64, M=16, dictionary="coherent", coherence_target=target, coherence_kind=kind
    )
    d = make_synthetic(cfg).dictionary
    torch.testing.assert_close(d.norm(dim=0), torch.ones(64), rtol=0, atol=1e-5)
    measured = coherence(d)[kind]
    assert measured == pytest.approx(target, rel=0.05)
    assert coherence(make_synthetic(DataConfig(N=64, M=16)).dictionary)[kind] < measured


def test_orthogonal_dictionary() -> None:
    d = make_synthetic(DataConfig(N=8, M=16, K=3, dictionary="orthogonal")).dictionary
    assert d.shape == (16, 8)
    torch.testing.assert_close(d.T @ d, torch.eye(8), rtol=0, atol=1e-5)
    assert coherence(d)["max"] < 1e-5


def test_snr_db() -> None:
    for snr in (0.0, 10.0, 20.0):
        data = make_synthetic(DataConfig(train_samples=2048, test_samples=2048, snr_db=snr))
        d = data.dictionary
        clean = torch.cat([d @ data.codes_train, d @ data.codes_test], dim=1).double()
        noisy = torch.cat([data.x_train, data.x_test], dim=1).double()
        ratio = clean.square().mean() / (noisy - clean).square().mean()
        assert ratio.item() == pytest.approx(10 ** (snr / 10), rel=0.04)
    stream = SyntheticStream(DataConfig(snr_db=10.0), 4096, samples=8192)
    signal = noise = 0.0
    for batch in stream:
        clean = (stream.dictionary @ batch.codes.to_dense()).double()
        signal += clean.square().sum().item()
        noise += (batch.x - clean).square().sum().item()
    assert signal / noise == pytest.approx(10.0, rel=0.06)


def test_magnitude_mean_std_and_heterogeneity() -> None:
    cfg = replace(BERN, magnitude="exponential", magnitude_mean=2.0, magnitude_std=0.5)
    values = _codes(cfg)
    v = values[values != 0].double()
    assert v.mean().item() == pytest.approx(2.0, abs=0.02)
    assert v.std().item() == pytest.approx(0.5, abs=0.02)
    het = _codes(replace(cfg, magnitude_heterogeneity=0.5))
    means = het.sum(dim=1) / (het != 0).sum(dim=1)
    ratio = means / 2.0  # per-feature scale h_i, log-normal with E[h] = 1
    assert ratio.log().std().item() == pytest.approx(0.5, abs=0.15)


def test_importance_weights() -> None:
    small = replace(BERN, train_samples=10, test_samples=10)
    assert torch.equal(make_synthetic(small).importance, torch.ones(64))
    data = make_synthetic(replace(small, importance="decay", importance_decay=0.8))
    torch.testing.assert_close(data.importance, 0.8 ** torch.arange(64.0))
    assert data.to(torch.device("cpu")).importance is not None
    assert "importance" not in {f.name for f in fields(data)}


RICH = replace(
    BERN,
    train_samples=300,
    test_samples=200,
    frequencies="zipf",
    zipf_exponent=0.5,
    correlation_rank=3,
    correlation_scale=0.4,
    hierarchy_depth=1,
    hierarchy_branching=3,
    magnitude_heterogeneity=0.3,
    snr_db=15.0,
    dictionary="coherent",
    coherence_target=0.5,
)


def test_rich_law_is_deterministic_per_seed_and_ignores_global_rng() -> None:
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = make_synthetic(RICH)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(1)
    b = make_synthetic(RICH)
    other = make_synthetic(replace(RICH, seed=RICH.seed + 1))
    for f in fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
        assert not torch.equal(getattr(a, f.name), getattr(other, f.name)), f.name


def test_stream_is_deterministic_random_access_and_consistent() -> None:
    cfg = replace(RICH, snr_db=None, noise_std=0.01)
    stream = SyntheticStream(cfg, 1000, samples=3500)
    first, second = list(stream), list(stream.batches(workers=2))
    assert len(first) == len(stream) == 4
    assert [b.x.shape[1] for b in first] == [1000, 1000, 1000, 500]
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.equal(a.x, b.x)
        assert torch.equal(a.codes.to_dense(), b.codes.to_dense())
        assert torch.equal(stream.batch(i).x, a.x)
    assert not torch.equal(first[0].x, first[1].x[:, :1000])
    assert torch.equal(stream.dictionary, make_synthetic(cfg).dictionary)
    dense = SyntheticStream(cfg, 1000, samples=3500, dense_codes=True).batch(2).codes
    assert torch.equal(dense, first[2].codes.to_dense())
    clean = SyntheticStream(replace(cfg, noise_std=0.0), 1000, samples=3500).batch(1)
    expected = stream.dictionary @ clean.codes.to_dense()
    torch.testing.assert_close(clean.x, expected, rtol=0, atol=1e-5)
    with pytest.raises(IndexError):
        stream.batch(4)


def test_stream_fixed_k_support() -> None:
    stream = SyntheticStream(DataConfig(N=12, M=6, K=4), 500, samples=1000)
    for batch in stream:
        assert ((batch.codes.to_dense() != 0).sum(dim=0) == 4).all()


def test_stream_memory_is_bounded_by_a_batch() -> None:
    """60 k samples of N=4,096, M=1,024 (234 MiB as one X, 0.9 GiB of dense codes): the peak RSS
    must stay far below that, from before the stream is built (the dictionary and its transposed
    copy, 2 × 16 MiB, plus a few batches) and once the first batches are done (no growth)."""
    code = """
import resource, torch
torch.set_num_threads(1)
from sparsegap.config import DataConfig
from sparsegap.data import SyntheticStream
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = DataConfig(N=4096, M=1024, K=4, support="bernoulli")
before = peak()
stream = SyntheticStream(cfg, 5_000, samples=60_000)
it = iter(stream)
for _ in range(2):
    next(it)
early = peak()
n = sum(b.x.shape[1] for b in it)
late = peak()
print(n, (late - before) // 1024, (late - early) // 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    samples, total_mib, growth_mib = map(int, out.stdout.split())
    assert samples == 50_000
    assert total_mib < 160, total_mib  # measured 110 MiB; X alone would be 234 MiB
    assert growth_mib < 80, growth_mib  # one batch of X is 20 MiB


BAD_DATA = [
    (["data.support=poisson"], "data.support='poisson'", "fixed_k, bernoulli"),
    (["data.frequencies=pareto"], "data.frequencies='pareto'", "uniform, zipf"),
    (["data.support=bernoulli", "data.zipf_exponent=-1"], "data.zipf_exponent=-1", ">= 0"),
    (
        ["data.support=bernoulli", "data.frequencies=zipf", "data.K=8"],
        "data.zipf_exponent=1.0",
        "would fire with probability",
    ),
    (["data.magnitude_std=-1"], "data.magnitude_std=-1", ">= 0"),
    (["data.magnitude_heterogeneity=-0.1"], "data.magnitude_heterogeneity=-0.1", ">= 0"),
    (["data.importance=linear"], "data.importance='linear'", "none, decay"),
    (["data.importance_decay=0"], "data.importance_decay=0", "(0, 1]"),
    (["data.importance_decay=1.5"], "data.importance_decay=1.5", "(0, 1]"),
    (["data.correlation_rank=-1"], "data.correlation_rank=-1", "between 0"),
    (["data.correlation_rank=17"], "data.correlation_rank=17", "data.N=16"),
    (["data.correlation_scale=1.0"], "data.correlation_scale=1.0", "[0, 1)"),
    (["data.hierarchy_depth=-1"], "data.hierarchy_depth=-1", ">= 0"),
    (["data.hierarchy_branching=0"], "data.hierarchy_branching=0", "at least 1"),
    (["data.frequencies=zipf"], "data.support='fixed_k'", "need data.support=bernoulli"),
    (
        ["data.correlation_rank=2", "data.correlation_scale=0.5"],
        "data.support='fixed_k'",
        "data.correlation_*",
    ),
    (["data.hierarchy_depth=1"], "data.support='fixed_k'", "data.hierarchy_depth"),
    (
        [
            "data.support=bernoulli",
            "data.hierarchy_depth=3",
            "data.hierarchy_exclusive=true",
            "data.K=10",
        ],
        "data.K=10",
        "expected L0 of at most",
    ),
    (["data.dictionary=sparse"], "data.dictionary='sparse'", "gaussian, orthogonal, coherent"),
    (["data.dictionary=orthogonal"], "data.dictionary='orthogonal'", "data.N <= data.M=8"),
    (["data.coherence_kind=rms"], "data.coherence_kind='rms'", "mean, max"),
    (
        ["data.dictionary=coherent", "data.coherence_target=1.5"],
        "data.coherence_target=1.5",
        "(0, 1)",
    ),
    (
        ["data.dictionary=coherent", "data.coherence_target=0.01"],
        "data.coherence_target=0.01",
        "Gaussian atoms' mean |cosine|",
    ),
    (["data.snr_db=10", "data.noise_std=0.1"], "data.snr_db=10", "data.noise_std=0.1"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_DATA, ids=lambda v: str(v))
def test_bad_data_value_names_key_value_and_allowed(overrides, key, allowed) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config(overrides))
    assert key in str(info.value)
    assert allowed in str(info.value)


def test_valid_rich_data_config_passes() -> None:
    validate(
        compose_config(
            [
                "data.support=bernoulli",
                "data.frequencies=zipf",
                "data.zipf_exponent=0.5",
                "data.K=2",
                "data.correlation_rank=2",
                "data.correlation_scale=0.3",
                "data.hierarchy_depth=1",
                "data.hierarchy_exclusive=true",
                "data.dictionary=coherent",
                "data.coherence_target=0.5",
                "data.snr_db=20",
                "data.importance=decay",
            ]
        )
    )
