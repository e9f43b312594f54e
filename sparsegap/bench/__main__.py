"""``make bench``: speed of sparsegap's hot paths as ratios against straightforward baselines
measured in the same process.

The baselines re-implement the authors' style of code (one model per process, ``nn.Linear``
layers, autograd, ``torch.optim.Adam``, per-pair Pearson correlations) so the ratio says what the
batched, replica-axis design buys on this machine. They run first, before sparsegap changes the
process allocator setting (see ``sparsegap.runtime``); they are also re-timed after it so the
ratio is not credited to the allocator alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    """Median seconds per call over ``repeats`` calls, in 5 batches."""
    for _ in range(warmup):
        fn()
    per_batch = max(1, repeats // 5)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        times.append((time.perf_counter() - start) / per_batch)
    return statistics.median(times)


# ---------------------------------------------------------------- baselines (authors' style)
class BaselineModel(nn.Module):
    """One model: encoder layers + a decoder renormalised before every forward pass."""

    def __init__(self, kind: str, n: int, m: int, hidden: int, samples: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "sae":
            self.encoder = nn.Sequential(nn.Linear(m, n, bias=False), nn.ReLU())
        elif kind == "mlp":
            self.encoder = nn.Sequential(
                nn.Linear(m, hidden, bias=False),
                nn.ReLU(),
                nn.Linear(hidden, n, bias=False),
                nn.ReLU(),
            )
        else:
            self.log_codes = nn.Parameter(torch.full((samples, n), -10.0))
        self.decoder = nn.Parameter(torch.randn(n, m))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            self.decoder.data = self.decoder.data / self.decoder.data.norm(dim=1, keepdim=True)
        codes = self.encoder(x) if self.kind != "sc" else torch.exp(self.log_codes)
        return codes, codes @ self.decoder


def baseline_step(kind: str, hidden: int = 32) -> Callable[[], None]:
    x = torch.randn(1024, 8)
    model = BaselineModel(kind, 16, 8, hidden, 1024)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        codes, recon = model(x)
        loss = F.mse_loss(recon, x) + 0.01 * codes.abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return step


def baseline_mcc(true: np.ndarray, learned: np.ndarray) -> float:
    """Per-pair Pearson correlations in a double loop, then optimal matching."""
    n, l = true.shape[1], learned.shape[1]
    corr = np.zeros((n, l))
    for i in range(n):
        for j in range(l):
            a, b = true[:, i], learned[:, j]
            if a.std() > 0 and b.std() > 0:
                corr[i, j] = abs(np.corrcoef(a, b)[0, 1])
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def baseline_ito(x: torch.Tensor, dictionary: torch.Tensor, iterations: int) -> torch.Tensor:
    """Autograd + torch.optim.Adam on log-codes, one dictionary (samples as rows)."""
    log_codes = torch.full((x.shape[0], dictionary.shape[0]), -10.0, requires_grad=True)
    optimiser = torch.optim.Adam([log_codes], lr=3e-3)
    for _ in range(iterations):
        codes = log_codes.exp()
        loss = F.mse_loss(codes @ dictionary, x) + 0.01 * codes.abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return log_codes.detach().exp()


# ---------------------------------------------------------------- sparsegap
def sparsegap_step(overrides: list[str]) -> Callable[[], None]:
    from hydra import compose, initialize_config_module

    from sparsegap.model import build
    from sparsegap.registry import register_configs
    from sparsegap.step import make_step

    register_configs()
    with initialize_config_module("sparsegap.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "logger=none", "device=cpu", "replicas=5"])
    return make_step(build(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    reps = lambda n: max(5, int(n * scale))  # noqa: E731

    from sparsegap.config import DataConfig, InferenceConfig
    from sparsegap.data import make_synthetic
    from sparsegap.inference import build_inference
    from sparsegap.metrics import latent_mcc
    from sparsegap.runtime import keep_freed_memory

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    mlp_256 = ["encoder=mlp", "encoder.hidden=256"]
    cases = [
        ("sae", ["encoder=sae"], "sae", 32, 2000),
        ("mlp-32", ["encoder=mlp", "encoder.hidden=32"], "mlp", 32, 1000),
        ("mlp-256", mlp_256, "mlp", 256, 300),
        # the same step without the fused C++ kernel (sparsegap/accel/native)
        ("mlp-256 torch", [*mlp_256, "encoder.native=false"], "mlp", 256, 300),
        ("sparse_coding", ["encoder=sparse_coding"], "sc", 32, 2000),
    ]
    base_default = {n: timeit(baseline_step(k, h), reps(r)) for n, _, k, h, r in cases}
    data = make_synthetic(DataConfig())
    ito_iters = reps(1000)
    x_rows, dict_rows = data.x_test.T.contiguous(), data.dictionary.T.contiguous()
    ito_default = (
        timeit(lambda: baseline_ito(x_rows, dict_rows, ito_iters), 1, warmup=1) / ito_iters
    )

    keep_freed_memory()
    base = {n: timeit(baseline_step(k, h), reps(r)) for n, _, k, h, r in cases}
    print("Full-batch training step (1,024 samples, N=16, M=8), median ms")
    print(
        f"{'encoder':<14} {'baseline 1 model':>17} {'(+allocator)':>13}"
        f" {'sparsegap 5 replicas':>21} {'ratio':>7}"
    )
    for name, overrides, _, _, r in cases:
        ours = timeit(sparsegap_step(overrides), reps(r))
        print(
            f"{name:<14} {base_default[name] * 1e3:>17.3f} {base[name] * 1e3:>13.3f}"
            f" {ours * 1e3:>21.3f} {ours / base_default[name]:>7.2f}"
        )

    print("\nInference-time optimisation (Adam on log-codes, 1,024 samples), ms per iteration")
    atoms = data.dictionary.expand(5, *data.dictionary.shape).contiguous()
    inference = build_inference(InferenceConfig(iterations=ito_iters), 0.01)
    ours = timeit(lambda: inference(data.x_test, atoms), 1, warmup=1) / ito_iters
    print(
        f"baseline 1 dictionary {ito_default * 1e3:.3f} · sparsegap 5 replicas {ours * 1e3:.3f}"
        f" · ratio {ours / ito_default:.3f} · 10,000 iterations: {ours * 1e4:.2f} s"
    )

    print("\nLatent MCC, one call, ms")
    g = torch.Generator().manual_seed(0)
    for n in (16, 256):
        true = torch.randn(1024, n, generator=g).relu()
        learned = torch.randn(1024, n, generator=g).relu()
        columns, rows = true.T.contiguous(), learned.T.unsqueeze(0).contiguous()
        ours = timeit(lambda c=columns, r=rows: latent_mcc(c, r), reps(50))
        naive_reps = 3 if n == 16 else 1
        t, lrn = true.numpy(), learned.numpy()
        naive = timeit(lambda t=t, lrn=lrn: baseline_mcc(t, lrn), naive_reps, warmup=1)
        print(
            f"1,024 × {n:<4} per-pair baseline {naive * 1e3:>9.1f} · sparsegap {ours * 1e3:>7.3f}"
            f" · speed-up {naive / ours:>8.0f}×"
        )


if __name__ == "__main__":
    main()
