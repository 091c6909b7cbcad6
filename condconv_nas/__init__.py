"""condconv-nas: neural architecture search for CondConv.

Importing the package is light: torch, timm and fvcore load on first use of the API below,
optuna only when searching, ray and nni only with their backends.
"""
from importlib import import_module

__version__ = "0.1.0"

_API = {
    "ArchSpec": "condconv_nas.spec",
    "load_spec": "condconv_nas.spec",
    "PRESETS": "condconv_nas.spec",
    "build_model": "condconv_nas.models",
    "count_madds": "condconv_nas.madds",
    "count_params": "condconv_nas.madds",
    "load_exported": "condconv_nas.train.checkpoint",
}
__all__ = sorted(_API) + ["layers"]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name in ("layers", "models", "search", "train"):
        return import_module(f"condconv_nas.{name}")
    raise AttributeError(f"module 'condconv_nas' has no attribute {name!r}")
