"""CPU throughput of each pretrained-gap method: ms per 1,000 tokens.

    python -m sparsegap.pretrained.bench [--dim 768] [--latents 4096] [--tokens 4096]

A random ReLU SAE (unit-norm decoder, encoder = decoderᵀ, bias giving about 32 active latents)
on Gaussian activations; each method as ``gap.py`` runs it, with the budgets given.
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsegap.config import InferenceConfig
from sparsegap.inference.adam_log import AdamLog
from sparsegap.inference.ista import FISTA
from sparsegap.inference.matching_pursuit import OrthogonalMatchingPursuit
from sparsegap.inference.refit import Refit


def throughput(
    dim: int = 768,
    latents: int = 4096,
    tokens: int = 4096,
    fista_iterations: int = 100,
    ito_iterations: int = 100,
    k: int = 32,
    batch: int = 1024,
) -> dict[str, float]:
    """ms per 1,000 tokens of: encoder, refit, fista, omp (k), ito, each over ``tokens``."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(1, dim, latents, generator=g), dim=1)
    x = torch.randn(dim, tokens, generator=g)
    pre = atoms[0].T @ x
    bias = -pre.kthvalue(latents - k, dim=0).values.mean()
    methods = {
        "encoder": lambda cols, init: (atoms[0].T @ cols + bias).relu()[None],
        "refit": lambda cols, init: Refit(InferenceConfig(name="refit"), 0.0)(cols, atoms, init),
        "fista": lambda cols, init: FISTA(
            InferenceConfig(name="fista", iterations=fista_iterations), 0.1
        )(cols, atoms),
        "omp": lambda cols, init: OrthogonalMatchingPursuit(
            InferenceConfig(name="omp", iterations=k, k=k), 0.0
        )(cols, atoms),
        "ito": lambda cols, init: AdamLog(
            InferenceConfig(name="adam_log", iterations=ito_iterations), 0.1
        )(cols, atoms, init),
    }
    out = {}
    for name, method in methods.items():
        size = min(batch, max(1, (1 << 25) // (k * latents))) if name == "omp" else batch
        seconds = 0.0
        for start in range(0, tokens, size):
            cols = x[:, start : start + size]
            init = (atoms[0].T @ cols + bias).relu()[None]
            started = time.perf_counter()
            method(cols, init)
            seconds += time.perf_counter() - started
        out[name] = 1e6 * seconds / tokens  # ms per 1,000 tokens
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in [
        ("dim", 768),
        ("latents", 4096),
        ("tokens", 4096),
        ("fista_iterations", 100),
        ("ito_iterations", 100),
        ("k", 32),
    ]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    results = throughput(**vars(args))
    print(
        f"d={args.dim}, {args.latents} latents, {args.tokens} tokens, {torch.get_num_threads()}"
        f" threads: ms per 1,000 tokens"
    )
    for name, ms in results.items():
        print(f"  {name:<8} {ms:10.1f}")


if __name__ == "__main__":
    main()
