"""The optional parts of the package and the modules each needs (pyproject.toml's extras).

The core install runs every synthetic experiment; asking for an optional part without its extra
is one ``error:`` line naming the extra (exit code 2), before anything heavy runs. The check
looks the modules up without importing them (importing transformer-lens alone takes seconds).
"""

from __future__ import annotations

import importlib.util

from sparsegap.config import ConfigError

# Extra → the top-level modules it provides, as the code imports them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "lm": ("transformer_lens", "transformers", "datasets"),
    "autointerp": ("openai", "transformer_lens", "transformers", "datasets"),
    "sklearn": ("sklearn",),
    "gpu": ("triton",),
}


class MissingExtra(ConfigError):
    """An option needs an optional dependency that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, wanted_by: str) -> None:
    """Raise :class:`MissingExtra` when ``extra`` is not installed; ``wanted_by`` names what
    asked for it (``data=lm``, ``encoder=sklearn_dl``)."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(
            f"{wanted_by} needs the optional dependencies of sparsegap[{extra}]"
            f" ({', '.join(missing)} not installed): pip install 'sparsegap[{extra}]'"
        )
