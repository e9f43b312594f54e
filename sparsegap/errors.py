"""The errors that stop a run before it starts (an invalid configuration, a run refused for its
surroundings), and the two checks that build a configuration error's message.

The bottom of the import graph (it imports nothing), so that the schemas, the cross-field
validation and each method's own checks can all raise the same error.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""


class RunRefused(RuntimeError):
    """A run that cannot start as configured, for a reason outside its config (its folder is in
    use, no W&B login): like an invalid config, one ``error:`` line and exit code 2."""


def need(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise ``ConfigError`` naming ``key``, its ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    """``value`` must be one of ``allowed``."""
    need(value in allowed, key, value, f"allowed values are {', '.join(allowed)}")
