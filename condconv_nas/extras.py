"""The optional dependencies, in one place: which extra installs each, and a check that names it.

The core install (torch, timm, fvcore, Optuna, matplotlib, plotly, tensorboard) needs none of
these; a command that does needs its extra, and says so in one line before any work.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import UsageError

EXTRAS = {  # top-level module -> the extra of setup.cfg that installs it
    "ray": "ray",
    "nni": "nni",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "psycopg": "postgres",
    "optuna_dashboard": "dashboard",
}


def has(module: str) -> bool:
    """Whether ``module``'s top-level package is installed, without importing it."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):  # a broken install
        return False


def require(module: str, *, needed_for: str) -> None:
    """`UsageError` naming the extra to install unless ``module`` is installed."""
    top = module.partition(".")[0]
    if not has(top):
        raise UsageError(f"{needed_for} needs {top}: pip install 'condconv-nas[{EXTRAS[top]}]'")


def load(module: str, *, needed_for: str) -> ModuleType:
    """``module``, imported; `UsageError` naming the extra when it is not installed."""
    require(module, needed_for=needed_for)
    return importlib.import_module(module)
