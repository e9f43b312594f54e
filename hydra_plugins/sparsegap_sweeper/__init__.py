"""sparsegap's Hydra sweeper (``hydra/sweeper=sparsegap``, python -m sparsegap's default)."""
