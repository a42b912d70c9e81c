"""Resolve a user's ``module:function`` string to a callable, with a clear error."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .config import ConfigError


class UserCodeError(ConfigError):
    """The user's own function raised: one line naming it (exit code 2); ``--debug`` shows its traceback.

    ``prompt_id`` is the prompt it was called on, when the caller knows it.
    """

    def __init__(self, message: str, prompt_id: str | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id


def call_user(fn: Callable, key: str, spec: str, *args: Any, prompt_id: str | None = None, where: str = "") -> Any:
    """``fn(*args)``, with any exception it raises turned into a :class:`UserCodeError` naming ``key``,
    ``spec``, the prompt (``prompt_id``, or ``where`` in words) and the exception."""
    try:
        return fn(*args)
    except Exception as e:
        on = f" on prompt {prompt_id}" if prompt_id is not None else where
        raise UserCodeError(f"{key} {spec!r} raised {type(e).__name__}: {e}{on}", prompt_id) from e


def load_callable(spec: str, key: str) -> Callable:
    """Import ``module:function`` (dots allowed in both parts). ``key`` names the config field."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: got {spec!r}, expected 'module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return obj
