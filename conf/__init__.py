# Makes conf/ the package sparsegap.conf (pyproject.toml maps it), which Hydra loads from any
# folder as pkg://sparsegap.conf: Hydra's package config source requires an __init__.py.
