"""The pretrained-gap throughput bench (``make bench``, ``make bench-gpu``) runs every method."""

import math

from sparsegap.pretrained.bench import throughput


def test_bench_times_every_method_on_a_small_sae():
    result = throughput(dim=16, latents=64, tokens=96, fista_iterations=3, ito_iterations=3, k=4,
                        batch=32, device="cpu")  # fmt: skip
    assert set(result) == {"encoder", "refit", "fista", "omp", "ito"}
    assert all(math.isfinite(ms) and ms > 0 for ms in result.values())
