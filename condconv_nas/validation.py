"""One way to check configurations (spec, recipe, search space): pydantic over our dataclasses.

Each configuration is a dataclass whose type hints say everything: strict scalar types
(``StrictInt``, finite ``Float``, ``Literal`` choices), ranges as ``Field(ge=..., le=...)``, and
``extra="forbid"`` so that an unknown key is an error. `parse` turns the first problem into one
line naming the field.
"""

from __future__ import annotations

import json
import reprlib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as _PydanticError

from .errors import UsageError

T = TypeVar("T")

# The largest budget: far beyond any network of the spec's ranges (ResNet-50, 8 times as wide and
# deep, at 4096 pixels, is about 10**15), and its run name stays short.
MAX_MADDS = 10**18
MAX_TRIALS = 10**6  # of a run (--trials, a recipe's trials)

# The config every checked dataclass carries: unknown keys are errors.
FORBID_EXTRA = ConfigDict(extra="forbid")

__all__ = [
    "FORBID_EXTRA",
    "Float",
    "StrictBool",
    "StrictInt",
    "StrictStr",
    "check_batch_size",
    "check_int",
    "check_seed",
    "parse",
    "read_json",
    "read_yaml",
    "short_repr",
]


# A finite number: an int is taken as a float; a bool or a string is refused.
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]


# A value in a message: long strings, numbers, deep or wide structures cut short (a YAML file's
# aliases can make a structure of 10**9 items, whose full repr would never end).
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 8


def short_repr(value: Any) -> str:
    """``repr(value)``, at most a line's worth of it."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more digits than str() converts (in it)
        if isinstance(value, int):
            return f"an integer of {len(hex(value)) * 1.2:.0f} digits or so"
        return f"a {type(value).__name__}"
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"


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
        return f"{where}: expected a mapping of keys, got {short_repr(e.get('input'))}"
    # our own validators' messages come as they were raised, without pydantic's "Value error, "
    msg = str(e.get("ctx", {}).get("error", e["msg"])) if e["type"] == "value_error" else e["msg"]
    return f"{where}: {msg[0].lower()}{msg[1:]}, got {short_repr(e.get('input'))}"


def parse(cls: type[T], data: Any, where: str = "", error: type[UsageError] = UsageError) -> T:
    """``data`` (a dict from JSON or YAML) as a ``cls``, or ``error`` naming the first bad field."""
    try:
        return _adapter(cls).validate_python(data)
    except _PydanticError as e:
        raise error(f"{where}: {describe(e)}" if where else describe(e)) from None


def check_int(value: Any, flag: str, low: int, high: int) -> int:
    """``value`` if it is an integer in [low, high] (a bool is none); `UsageError` naming ``flag``
    and the range otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{flag} must be an integer in [{low}, {high}], got {short_repr(value)}")
    return value


def check_batch_size(batch_size: Any) -> int:
    """``--batch-size``: an integer in [1, 2**20] (a recipe's range); `UsageError` otherwise."""
    return check_int(batch_size, "--batch-size", 1, 1 << 20)


def check_seed(seed: Any) -> int:
    """``--seed``: an integer in [0, 2**32) (what torch and Optuna seed with); `UsageError`
    otherwise."""
    return check_int(seed, "--seed", 0, 2**32 - 1)


def _read_text(path: Path, where: str, error: type[UsageError], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{where}: not {what} (not UTF-8 text)") from None
    except OSError as e:
        raise error(f"{where}: cannot read it ({e.strerror})") from None


# Why a file whose structure nests deeper than Python's parsers recurse is refused.
TOO_DEEP = "nested too deeply (lists or mappings within each other hundreds of levels deep)"


def read_json(path: Path, where: str, error: type[UsageError] = UsageError) -> Any:
    """A JSON file's data; unreadable, non-UTF-8, malformed or too deeply nested files, and
    numbers too long to read, are one-line ``error``s starting with ``where``."""
    text = _read_text(path, where, error, "valid JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e})") from None
    except ValueError:  # an integer of more digits than Python converts (sys.int_info)
        raise error(f"{where}: not valid JSON (a number too long to read)") from None
    except RecursionError:
        raise error(f"{where}: {TOO_DEEP}") from None


def read_yaml(path: Path, where: str) -> Any:
    """A YAML file's data; unreadable, non-UTF-8, malformed or too deeply nested files are
    one-line usage errors."""
    import yaml

    text = _read_text(path, where, UsageError, "valid YAML")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UsageError(f"{where}: not valid YAML{at} ({problem})") from None
    except RecursionError:
        raise UsageError(f"{where}: {TOO_DEEP}") from None
    except (ValueError, OverflowError) as e:  # a value its tag cannot be (a number too long...)
        reason = str(e).split(";")[0].splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{where}: not valid YAML ({reason[:120]})") from None
