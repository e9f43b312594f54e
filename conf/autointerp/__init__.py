# The package sparsegap.conf.autointerp: Hydra loads it as pkg://sparsegap.conf.autointerp (see
# conf/__init__.py).
