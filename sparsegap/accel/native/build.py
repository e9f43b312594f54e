"""Compile a kernel of this folder into a shared library on first use and load it.

The library is cached under ``$SPARSEGAP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sparsegap`` or
``~/.cache/sparsegap``), keyed by the source, the flags and the compiler, so an edited kernel is
rebuilt and concurrent jobs of a multirun never load a half-written file (each compiles to a
temporary name and renames it into place). The kernels link OpenMP by the name ``libgomp.so.1``,
which resolves to the copy torch has already loaded, so they share torch's thread pool instead of
starting a second one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCES = Path(__file__).resolve().parent
FLAGS = ("-std=c++20", "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 300


class NativeUnavailable(RuntimeError):
    """A kernel cannot be built or loaded on this machine; the message says why."""


def cache_dir() -> Path:
    if os.environ.get("SPARSEGAP_CACHE_DIR"):
        return Path(os.environ["SPARSEGAP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsegap"


def _compiler() -> str:
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise NativeUnavailable(f"no C++ compiler: {name!r} not found (set CXX to use another)")
    return path


def _check_cpu() -> None:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeUnavailable(
            f"the kernels target x86-64 Linux, not {sys.platform}/{platform.machine()}"
        )
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise NativeUnavailable(f"the kernels need AVX2 and FMA; this CPU offers {capability}")


@functools.cache
def library(name: str) -> ctypes.CDLL:
    """The compiled kernel ``<name>.cpp``, built if needed. Raises ``NativeUnavailable``."""
    _check_cpu()
    compiler = _compiler()
    source = SOURCES / f"{name}.cpp"
    digest = hashlib.sha256(source.read_bytes() + " ".join((compiler, *FLAGS)).encode())
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        _compile(compiler, source, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise NativeUnavailable(f"cannot load {target}: {error}") from error


def _compile(compiler: str, source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as error:
        raise NativeUnavailable(
            f"cannot write the kernel cache {target.parent}: {error}"
        ) from error
    try:
        result = subprocess.run(
            [compiler, *FLAGS, str(source), "-o", temporary],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise NativeUnavailable(
                f"compiling {source.name} failed ({compiler}):\n{result.stderr.strip()[-2000:]}"
            )
        os.replace(temporary, target)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NativeUnavailable(f"compiling {source.name} failed: {error}") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
