"""Throughput of each pretrained-gap method: ms per 1,000 tokens.

    python -m sparsegap.pretrained.bench [--dim 768] [--latents 4096] [--tokens 4096]
    python -m sparsegap.pretrained.bench --device cuda --latents 24576 --tokens 65536 --batch 8192

Tokens are independent, so ms per 1,000 tokens is also seconds per 1 M tokens: on a GPU
(``make bench-gpu``) it says how long the gap command's methods take over 1 M tokens of a
24,576-latent SAE.

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
    device: str = "cpu",
) -> dict[str, float]:
    """ms per 1,000 tokens of: encoder, refit, fista, omp (k), ito, each over ``tokens``."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(1, dim, latents, generator=g), dim=1)
    x = torch.randn(dim, tokens, generator=g)
    atoms, x = atoms.to(device), x.to(device)
    sync = torch.cuda.synchronize if atoms.is_cuda else (lambda: None)
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
        method(x[:, :size], (atoms[0].T @ x[:, :size] + bias).relu()[None])  # warm-up
        seconds = 0.0
        for start in range(0, tokens, size):
            cols = x[:, start : start + size]
            init = (atoms[0].T @ cols + bias).relu()[None]
            sync()
            started = time.perf_counter()
            method(cols, init)
            sync()
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
        ("batch", 1024),
    ]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    results = throughput(**vars(args))
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"d={args.dim}, {args.latents} latents, {args.tokens} tokens, batches of {args.batch},"
        f" {where}: ms per 1,000 tokens"
        " (= seconds per 1 M tokens)"
    )
    for name, ms in results.items():
        print(f"  {name:<8} {ms:10.1f}")


if __name__ == "__main__":
    main()
