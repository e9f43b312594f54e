"""Benchmarks, kept apart from the science modules: ``python -m sparsegap.bench`` (`make bench`:
CPU hot paths as ratios against straightforward baselines), ``python -m sparsegap.bench.gpu``
(`make bench-gpu`: the language-model path on a GPU) and ``python -m sparsegap.bench.data``
(streaming synthetic data throughput). Nothing else in the package imports them."""
