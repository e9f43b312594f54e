"""Streaming synthetic data throughput: ``python -m sparsegap.bench.data``.

Default problem: N = 4,096 features, M = 512, expected L0 = K = 8, Bernoulli support with Zipf
frequencies (exponent 0.6), a rank-8 Gaussian copula (latent correlation 0.3 within a factor) and
hierarchies of depth 2, branching 2 (trees of 7); no noise. Streams 10 M samples in batches of
65,536, two batches at a time in two threads with one torch thread each (``--workers 2
--threads 1``: on a small CPU this beats torch's own intra-op threading, whose per-op
synchronisation dominates these many small ops). Reports samples/s, samples per CPU-second and
the peak resident memory (bounded by the batches in flight).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from omegaconf import OmegaConf

from sparsegap.config import DataConfig
from sparsegap.data import SyntheticStream
from sparsegap.validate import check_data_laws


def bench_config(**overrides) -> DataConfig:
    base = dict(
        N=4096,
        M=512,
        K=8,
        support="bernoulli",
        frequencies="zipf",
        zipf_exponent=0.6,
        correlation_rank=8,
        correlation_scale=0.3,
        hierarchy_depth=2,
        hierarchy_branching=2,
    )
    return DataConfig(**{**base, **overrides})


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's)"
    )
    parser.add_argument("--workers", type=int, default=2, help="batches drawn concurrently")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = bench_config()
    check_data_laws(OmegaConf.structured(cfg))
    stream = SyntheticStream(cfg, args.batch, samples=args.samples)
    next(iter(SyntheticStream(cfg, 1024, samples=1024)))  # warm-up outside the timing
    rss_before = peak_rss_mib()
    nnz = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in stream.batches(workers=args.workers):
        nnz += batch.codes.values().numel()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(
        f"N={cfg.N} M={cfg.M} K={cfg.K} zipf({cfg.zipf_exponent}) copula(rank"
        f" {cfg.correlation_rank}, scale {cfg.correlation_scale}) hierarchy(depth"
        f" {cfg.hierarchy_depth}, branching {cfg.hierarchy_branching}), batch {args.batch},"
        f" {torch.get_num_threads()} threads, {args.workers} workers"
    )
    print(f"{args.samples:,} samples in {elapsed:.2f} s: {args.samples / elapsed:,.0f} samples/s")
    print(
        f"CPU time {cpu:.2f} s: {args.samples / cpu:,.0f} samples per CPU-second"
        " (≈ one uncontended core's throughput)"
    )
    print(f"mean L0 {nnz / args.samples:.3f} (expected {cfg.K})")
    print(f"peak RSS {rss_before:.0f} MiB after warm-up, {peak_rss_mib():.0f} MiB at the end")


if __name__ == "__main__":
    main()
