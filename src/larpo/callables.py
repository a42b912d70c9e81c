"""Resolve a user's ``module:function`` string to a callable, with a clear error."""

from __future__ import annotations

import importlib
from typing import Callable

from .config import ConfigError


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
