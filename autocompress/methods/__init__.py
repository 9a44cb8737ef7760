"""The one entry point to the methods: one module per family of the survey's taxonomy; importing this
package fills the registry (methods, finalizers, module kinds). Import from here, not from ``base``, to
see every method.

Methods of your own: name their modules in ``AUTOCOMPRESS_PLUGINS`` (comma-separated, importable
from ``PYTHONPATH``); each registers its methods with ``@register`` like the bundled ones. Trial
workers of a local Ray inherit the variable, so they see the same methods.
"""
import importlib
import os

from . import distillation, early_exit, factorization, pruning, quantization, sharing, sparsity  # noqa: F401
from .base import MODULE_KINDS, REGISTRY, STAGES, Context, Method, RecipeError, get_method, module_spec  # noqa: F401

PLUGINS_ENV = "AUTOCOMPRESS_PLUGINS"


def _load_plugins() -> None:
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:
            raise RecipeError(f"{PLUGINS_ENV}: cannot import {name!r} ({type(e).__name__}: {e})") from None


_load_plugins()
