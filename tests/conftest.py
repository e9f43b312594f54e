"""Test-wide environment: no network, no writes outside pytest's temporary folders.

The fixed variables are set at import time, i.e. before any test module (and anything it imports)
is collected. The folders come from ``tmp_path_factory`` in a session-scoped autouse fixture,
which runs before the first test; sparsegap imports wandb lazily (inside ``Tracker``), so wandb
sees them. Thread counts are deliberately left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_FIXED_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}
os.environ.update(_FIXED_ENV)

# Environment variable -> sub-folder of the session's temporary directory.
_TEMP_DIRS = {
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_CONFIG_DIR": "wandb-config",
    "WANDB_DATA_DIR": "wandb-data",
    "HF_HOME": "hf-home",
    "SPARSEGAP_CACHE_DIR": "sparsegap-cache",  # compiled kernels (sparsegap.accel.native)
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("env")
    saved = {name: os.environ.get(name) for name in (*_TEMP_DIRS, *_FIXED_ENV)}
    os.environ.update(_FIXED_ENV)
    for name, sub in _TEMP_DIRS.items():
        path = root / sub
        path.mkdir()
        os.environ[name] = str(path)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (the machine is shared; inference tests are small)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
