"""One way to check configurations (spec, recipe, search space): pydantic over our dataclasses.

Each configuration is a dataclass whose type hints say everything: strict scalar types
(``StrictInt``, finite ``Float``, ``Literal`` choices), ranges as ``Field(ge=..., le=...)``, and
``extra="forbid"`` so that an unknown key is an error. `parse` turns the first problem into one
line naming the field.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as _PydanticError

from .errors import UsageError

T = TypeVar("T")

# The config every checked dataclass carries: unknown keys are errors.
FORBID_EXTRA = ConfigDict(extra="forbid")

__all__ = ["FORBID_EXTRA", "Float", "StrictBool", "StrictInt", "StrictStr", "parse", "read_yaml"]


# A finite number: an int is taken as a float; a bool or a string is refused.
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def describe(error: _PydanticError) -> str:
    """The first problem of a validation error, as ``field: what is wrong, got VALUE``."""
    e = error.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "unexpected_keyword_argument":
        return f"{where}: unknown field"
    if e["type"] == "missing":
        return f"{where}: required field missing"
    if e["type"] in ("dataclass_type", "dict_type"):
        return f"{where}: expected a mapping of keys, got {e.get('input')!r}"
    return f"{where}: {e['msg'][0].lower()}{e['msg'][1:]}, got {e.get('input')!r}"


def parse(cls: type[T], data: Any, where: str = "", error: type[UsageError] = UsageError) -> T:
    """``data`` (a dict from JSON or YAML) as a ``cls``, or ``error`` naming the first bad field."""
    try:
        return _adapter(cls).validate_python(data)
    except _PydanticError as e:
        raise error(f"{where}: {describe(e)}" if where else describe(e)) from None


def check_seed(seed: Any) -> int:
    """``--seed``: an integer in [0, 2**32) (what torch and Optuna seed with); `UsageError`
    otherwise."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {seed!r}")
    return seed


def read_yaml(path: Path, where: str) -> Any:
    """A YAML file's data; unreadable, non-UTF-8 or malformed files are one-line usage errors."""
    import yaml  # noqa: PLC0415

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a UTF-8 text file") from None
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UsageError(f"{where}: not valid YAML{at} ({problem})") from None
