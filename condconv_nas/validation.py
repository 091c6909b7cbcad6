"""One way to check configurations (spec, recipe, search space): pydantic over our dataclasses.

Each configuration is a dataclass whose type hints say everything: strict scalar types
(``StrictInt``, ``Strict`` floats that are finite, ``Literal`` choices), ranges as
``Field(ge=..., le=...)``, and ``extra="forbid"`` so that an unknown key is an error. `parse`
turns the first problem into one line naming the field.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as _PydanticError

from .errors import UsageError

T = TypeVar("T")

# The config every checked dataclass carries: unknown keys are errors.
FORBID_EXTRA = ConfigDict(extra="forbid")

__all__ = ["FORBID_EXTRA", "Float", "Int", "StrictBool", "StrictInt", "StrictStr", "parse"]


def Int(ge: int | None = None, le: int | None = None) -> Any:  # noqa: N802  (a type, like Field)
    """An integer (never a bool or a float) in [ge, le]."""
    return Annotated[int, Field(strict=True, ge=ge, le=le)]


def Float(  # noqa: N802
    ge: float | None = None, le: float | None = None, gt: float | None = None
) -> Any:
    """A finite number (an int is taken as a float; never a bool or a string) in range."""
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=ge, le=le, gt=gt)]


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
    return f"{where}: {e['msg'][0].lower()}{e['msg'][1:]}, got {e.get('input')!r}"


def parse(cls: type[T], data: Any, where: str = "", error: type[UsageError] = UsageError) -> T:
    """``data`` (a dict from JSON or YAML) as a ``cls``, or ``error`` naming the first bad field."""
    try:
        return _adapter(cls).validate_python(data)
    except _PydanticError as e:
        raise error(f"{where}: {describe(e)}" if where else describe(e)) from None
