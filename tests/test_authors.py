"""The authors' data draw (``data.draw=authors``) and initialisation (``init=authors``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config
from torch import nn

from sparsegap.config import ConfigError, DataConfig
from sparsegap.data import make_synthetic
from sparsegap.encoders.layers import ReplicaLinear, replica_generators
from sparsegap.validate import validate

# The paper's data seed (known codes, known dictionary), 6 + 4 samples of the default regime:
# written once by make_synthetic(DataConfig(train_samples=6, test_samples=4, seed=20240625,
# draw="authors")) and checked equal, array for array, to the authors' own generate_data(16, 8, 3,
# 10, seed=20240625). Their dictionary comes from torch alone, so it is the paper's dictionary;
# the codes are the first 10 samples of the paper's training set.
REFERENCE = Path(__file__).parent / "data" / "authors_draw_seed20240625.npz"
PAPER = DataConfig(train_samples=6, test_samples=4, seed=20240625, draw="authors")


def _joined(data) -> dict[str, np.ndarray]:
    return {
        "dictionary": data.dictionary.numpy(),
        "codes": torch.cat([data.codes_train, data.codes_test], 1).numpy(),
        "x": torch.cat([data.x_train, data.x_test], 1).numpy(),
    }


def test_authors_draw_equals_reference_array() -> None:
    reference = np.load(REFERENCE)
    drawn = _joined(make_synthetic(PAPER))
    for name in ("dictionary", "codes", "x"):
        assert drawn[name].dtype == np.float32
        np.testing.assert_array_equal(drawn[name], reference[name], err_msg=name)


def test_authors_draw_is_a_prefix_of_the_full_set() -> None:
    # Sample i's values depend only on the draws before it: the paper's 2,048 samples start with
    # the reference's 10 (their split keeps the first half for training).
    reference = np.load(REFERENCE)
    full = make_synthetic(DataConfig(seed=20240625, draw="authors"))
    np.testing.assert_array_equal(full.codes_train[:, :10].numpy(), reference["codes"])
    np.testing.assert_array_equal(full.dictionary.numpy(), reference["dictionary"])


def test_authors_draw_law() -> None:
    data = make_synthetic(
        DataConfig(N=12, M=5, K=4, train_samples=50, test_samples=30, seed=3, draw="authors")
    )
    codes = torch.cat([data.codes_train, data.codes_test], 1)
    assert ((codes != 0).sum(0) == 4).all() and (codes >= 0).all()
    torch.testing.assert_close(data.dictionary.norm(dim=0), torch.ones(12))
    torch.testing.assert_close(data.x_train, data.dictionary @ data.codes_train)


def test_authors_draw_leaves_global_rng_alone() -> None:
    np.random.seed(1)
    torch.manual_seed(1)
    make_synthetic(PAPER)
    after = np.random.rand(), torch.rand(1).item()
    np.random.seed(1)
    torch.manual_seed(1)
    assert after == (np.random.rand(), torch.rand(1).item())


def test_default_draw_differs_from_authors() -> None:
    ours = make_synthetic(DataConfig(train_samples=6, test_samples=4, seed=20240625))
    assert not torch.equal(ours.dictionary, make_synthetic(PAPER).dictionary)


@pytest.mark.parametrize(
    "override",
    [
        "data.noise_std=0.1",
        "data.magnitude=exponential",
        "data.support=bernoulli",
        "data.draw=theirs",
    ],
)
def test_authors_draw_rejects_other_laws(override: str) -> None:
    cfg = compose_config(["data.draw=authors", override])
    with pytest.raises(ConfigError, match=r"data\.draw"):
        validate(cfg)


# ---------------------------------------------------------------------------------------------
# init=authors


def _authors_linear(seed: int, fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    torch.manual_seed(seed + 42)
    return nn.Linear(fan_in, fan_out, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
def test_authors_init_equals_nn_linear(bias: bool) -> None:
    seed = 20240625
    gens = replica_generators(seed, 3, "authors")
    layer = ReplicaLinear(8, 16, gens, bias=bias)
    for i in range(3):
        ref = _authors_linear(seed + i, 8, 16, bias)
        assert torch.equal(layer.weight[i], ref.weight.detach())
        if bias:
            assert torch.equal(layer.bias[i, :, 0], ref.bias.detach())


def test_authors_init_layers_in_construction_order() -> None:
    # The authors' MLP: Linear(M, h) then Linear(h, N), both from the one seeded stream.
    seed, h = 7, 32
    gens = replica_generators(seed, 2, "authors")
    first, second = ReplicaLinear(8, h, gens), ReplicaLinear(h, 16, gens)
    for i in range(2):
        torch.manual_seed(seed + i + 42)
        ref = nn.Sequential(nn.Linear(8, h, bias=False), nn.Linear(h, 16, bias=False))
        assert torch.equal(first.weight[i], ref[0].weight.detach())
        assert torch.equal(second.weight[i], ref[1].weight.detach())


def test_default_init_unchanged() -> None:
    # The sparsegap scheme: uniform ±1/sqrt(fan_in) from the replica's keyed generator.
    gens = replica_generators(0, 1)
    layer = ReplicaLinear(8, 16, gens)
    again = replica_generators(0, 1)[0]
    expected = (torch.rand((16, 8), generator=again) * 2 - 1) * (1 / math.sqrt(8))
    assert torch.equal(layer.weight[0], expected)
    assert not torch.equal(layer.weight[0], _authors_linear(0, 8, 16, False).weight.detach())


def _authors_model(name: str, seed: int, m: int = 8, n: int = 16, h: int = 32) -> dict:
    """Initial weights of the authors' models with a learned dictionary (experiments/models.py,
    use_bias=False): seeded layers in their order, the nn.Linear decoder's weight replaced by
    torch.randn(M, N); sparse coding draws only its dictionary."""
    torch.manual_seed(seed + 42)
    layers = []
    if name == "sae":
        layers = [nn.Linear(m, n, bias=False)]
    elif name == "mlp":
        layers = [nn.Linear(m, h, bias=False), nn.Linear(h, n, bias=False)]
    if layers:
        nn.Linear(n, m, bias=False)  # their decoder layer, whose weight is then replaced
    dictionary = torch.randn(m, n)
    return {"layers": [layer.weight.detach() for layer in layers], "dictionary": dictionary}


@pytest.mark.parametrize("encoder", ["sae", "mlp", "sparse_coding"])
def test_authors_init_of_whole_model(encoder: str) -> None:
    from sparsegap.model import build

    seed = 20240926
    cfg = compose_config(
        [
            f"encoder={encoder}",
            "scenario=unknown",
            "init=authors",
            f"seed={seed}",
            "data.draw=authors",
        ]
    )
    model = build(cfg, torch.device("cpu"))
    layers = [m.weight for m in model.encoder.modules() if isinstance(m, ReplicaLinear)]
    for i in range(cfg.replicas):
        ref = _authors_model(encoder, seed + i)
        assert len(layers) == len(ref["layers"])
        for ours, theirs in zip(layers, ref["layers"], strict=True):
            assert torch.equal(ours[i], theirs)
        # sparsegap normalises the atoms at construction, the authors before the first forward
        atoms = ref["dictionary"] / torch.linalg.norm(ref["dictionary"], dim=0, keepdim=True)
        torch.testing.assert_close(model.decoder.weight[i], atoms, rtol=0, atol=1e-7)
