"""The authors' data draw (``data.draw=authors``): the synthetic set the paper's figures were
computed on, reproduced draw for draw from a seed.

The authors' generator (``generate_data`` in their ``experiments/utils.py``, called by every
figure's script with the whole train + test set at once) seeds NumPy's global legacy generator and
torch's global generator with the same seed, then:

1. for each sample in turn: N values |N(0, 1)| from NumPy, then K distinct positions from NumPy's
   ``choice(N, K, replace=False)``; the sample's code keeps the values at those positions;
2. the dictionary from torch: an (N, M) standard normal matrix, each row (atom) scaled to unit norm;
3. X = S·D in float32 (S cast from float64 to float32 first).

The first ``train_samples`` samples are the training set, the rest the test set (the authors draw
2 × 1,024 and split in half). Their scripts use data seed 20240625 (known codes, known dictionary)
and 20240926 (unknown, MLP width, bias). Here both generators are local (``RandomState`` and
``torch.Generator`` seeded alike give the global generators' streams), so drawing leaves global
RNG state alone. Only the authors' law exists in this draw: exactly K active sources, |N(0, 1)|
magnitudes, Gaussian dictionary, no noise; ``problems`` names any other setting.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# data.<key>: the value the authors' generator implies (anything else is not their draw)
AUTHORS_LAW = {
    "support": "fixed_k",
    "magnitude": "abs_normal",
    "magnitude_mean": None,
    "magnitude_std": None,
    "magnitude_heterogeneity": 0.0,
    "dictionary": "gaussian",
    "noise_std": 0.0,
    "snr_db": None,
    "stream_batch": 0,
}


def problems(cfg) -> list[str]:
    """The data settings that ``draw=authors`` cannot honour, as ``data.key=value`` strings."""
    return [
        f"data.{key}={getattr(cfg, key, want)!r}"
        for key, want in AUTHORS_LAW.items()
        if getattr(cfg, key, want) != want
    ]


def draw(cfg) -> tuple[Tensor, Tensor, Tensor]:
    """Dictionary (M, N), codes (N, B) and X (M, B), B = train + test samples, in sparsegap's
    layout (one column per sample) but with the authors' values bit for bit."""
    bad = problems(cfg)
    if bad:
        raise ValueError(f"data.draw=authors draws only the authors' law; not {', '.join(bad)}")
    n, k, total = cfg.N, cfg.K, cfg.train_samples + cfg.test_samples
    rng = np.random.RandomState(cfg.seed)
    codes = np.zeros((total, n))
    for row in codes:  # one sample at a time: values, then support, from the one NumPy stream
        values = np.abs(rng.normal(0.0, 1.0, n))
        support = rng.choice(n, k, replace=False)
        row[support] = values[support]
    g = torch.Generator().manual_seed(cfg.seed)
    atoms = torch.randn(n, cfg.M, generator=g)  # (N, M): one atom per row, as the authors hold it
    atoms /= torch.linalg.norm(atoms, dim=1, keepdim=True)
    s = torch.from_numpy(codes).float()
    x = s @ atoms  # their product, in their orientation, so X's float32 rounding is theirs too
    return atoms.T.contiguous(), s.T.contiguous(), x.T.contiguous()
