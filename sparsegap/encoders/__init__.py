"""Encoders: one file each, registered by the name used in ``encoder=<name>``.

Every module of this package is imported (so a new encoder is one file here), then the plugin
modules (``sparsegap.plugins``: entry points and ``SPARSEGAP_PLUGINS``).
"""

import importlib
import pkgutil

from sparsegap.encoders.base import ENCODERS, Encoder, register_encoder
from sparsegap.plugins import load_plugins

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
load_plugins()

__all__ = ["ENCODERS", "Encoder", "register_encoder"]
