"""Methods from outside the package: encoders (and the inference algorithms they bring) that
register themselves when their module is imported, exactly as the package's own.

A plugin module is named by the entry-point group ``sparsegap.plugins`` of an installed
distribution, or listed (comma-separated module names) in the environment variable
``SPARSEGAP_PLUGINS``; both are imported with the encoder registry, before Hydra composes.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "sparsegap.plugins"
ENV_VAR = "SPARSEGAP_PLUGINS"
_loaded = False


def load_plugins() -> None:
    """Import every plugin module once (later calls do nothing)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin importing sparsegap.encoders must not recurse here
    for name in (n.strip() for n in os.environ.get(ENV_VAR, "").split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f"{ENV_VAR}: cannot import plugin module {name!r}: {error}"
            ) from error
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
