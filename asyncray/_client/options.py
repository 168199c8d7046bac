"""Validation of ``@remote(...)`` / ``.options(...)`` / ``@method(...)`` keywords, at the call site (SPEC 4).

As in Ray: an unknown name or a bad value raises ``ValueError``; a value of the wrong type
raises ``TypeError``. Messages name the option, what it was given to, and what it accepts.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from asyncray import _placement as placement

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "num_returns", "max_retries", "retry_exceptions", "max_calls",
    "name", "scheduling_strategy", "memory", "runtime_env", "num_return_vals", "accelerator_type",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries", "max_concurrency",
    "name", "namespace", "lifetime", "get_if_exists", "scheduling_strategy", "memory", "runtime_env",
    "concurrency_groups", "sync_methods_on_loop", "accelerator_type",
}
# ``@method(...)`` on an actor method, and ``handle.method.options(...)`` per call (which also takes ``name``).
METHOD_DECORATOR_OPTIONS = {"num_returns", "concurrency_group", "max_task_retries", "retry_exceptions", "num_return_vals"}
METHOD_OPTIONS = METHOD_DECORATOR_OPTIONS | {"name"}

# Where an option misplaced on the wrong kind of thing belongs, for a message that says so.
_BELONGS = {
    **{k: "remote functions" for k in TASK_OPTIONS - ACTOR_OPTIONS},
    **{k: "actor classes" for k in ACTOR_OPTIONS - TASK_OPTIONS},
    "concurrency_group": "actor methods (@asyncray.method)",
}

# As Ray: ``accelerator_type="X"`` asks for this much of the custom resource
# ``accelerator_type:X``, which a node with such accelerators offers (``--resources``).
ACCELERATOR_AMOUNT = 0.001

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line, outside asyncray."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)  # numpy numbers too


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy ints too


def _quantity(name: str, v: Any, what: str) -> None:
    if not _is_number(v):
        raise TypeError(f"{name} must be a number (int or float) for {what}, got {_describe(v)}")
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a number >= 0 for {what}, got {v!r}")


# Ray's words for the counts it checks (its tests match them), by option name.
_RAY_ACCEPTS = {
    "num_returns": "0 or a positive integer", "max_calls": "0 or a positive integer",
    "max_retries": "0, -1 or a positive integer", "max_restarts": "-1, 0 or a positive integer",
    "max_task_retries": "-1, 0 or a positive integer", "max_concurrency": "a positive integer",
}


def _int_at_least(low: int, meaning: str = "") -> Callable[[str, Any, str], None]:
    def check(name: str, v: Any, what: str) -> None:
        if _is_number(v) and not _is_int(v) or _is_int(v) and v < low:  # a number, but not one it takes: ValueError
            accepts = _RAY_ACCEPTS.get(name)
            ray = f"The keyword '{name}' only accepts {accepts}: " if accepts else ""
            raise ValueError(f"{ray}{name} must be an int >= {low}{meaning} for {what}, got {v!r}")
        if not _is_int(v):
            raise TypeError(f"{name} must be an int for {what}, got {_describe(v)}")

    return check


def _of_type(kind: type | tuple[type, ...], label: str) -> Callable[[str, Any, str], None]:
    def check(name: str, v: Any, what: str) -> None:
        if not isinstance(v, kind):
            raise TypeError(f"{name} must be {label} for {what}, got {_describe(v)}")

    return check


def _resources(name: str, v: Any, what: str) -> None:
    if not isinstance(v, dict):
        raise TypeError(f"resources must be a dict of name -> amount for {what}, got {type(v).__name__}")
    for k, amount in v.items():
        if not isinstance(k, str):
            raise TypeError(f"resource names must be strings for {what}, got {_describe(k)}")
        if k in ("CPU", "GPU"):
            raise ValueError(f"use num_cpus/num_gpus, not resources={{{k!r}: ...}}, for {what}")
        if not _is_number(amount):
            raise TypeError(f"resource {k!r} must be a number for {what}, got {_describe(amount)}")
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"resource {k!r} must be a number >= 0 for {what}, got {amount!r}")


def _num_returns(name: str, v: Any, what: str) -> None:
    if isinstance(v, str):
        # A str is Ray's spelling for generator returns: a value this runtime lacks, so ValueError as in Ray.
        raise ValueError(f"num_returns={v!r} (generator returns) is not supported for {what}; use an int >= 0")  # noqa: TRY004
    _int_at_least(0)(name, v, what)


def _retry_exceptions(name: str, v: Any, what: str) -> None:
    if isinstance(v, bool):
        return
    if not isinstance(v, list | tuple):
        raise TypeError(f"retry_exceptions must be a bool or a list of exception classes for {what}, got {_describe(v)}")
    for e in v:
        if not (isinstance(e, type) and issubclass(e, BaseException)):
            raise TypeError(f"retry_exceptions must list exception classes for {what}, got {e!r} in it")


def _strategy(name: str, v: Any, what: str) -> None:
    from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if isinstance(v, str):
        if v not in ("DEFAULT", "SPREAD"):
            raise ValueError(f"scheduling_strategy must be 'DEFAULT' or 'SPREAD' when a string, for {what}, got {v!r}")
    elif not isinstance(v, NodeAffinitySchedulingStrategy):
        raise TypeError(
            f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy for {what}, "
            f"got {_describe(v)}"
        )


def _lifetime(name: str, v: Any, what: str) -> None:
    if not isinstance(v, str):
        raise TypeError(f"lifetime must be 'detached' or 'non_detached' for {what}, got {_describe(v)}")
    if v not in ("detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached' for {what}, got {v!r}")


def _non_empty_str(name: str, v: Any, what: str) -> None:
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str for {what}, got {_describe(v)}")
    if not v:
        raise ValueError(f"{name} must not be empty for {what}")


def _concurrency_groups(name: str, v: Any, what: str) -> None:
    if not isinstance(v, dict):
        raise TypeError(f"concurrency_groups must be a dict of group name -> max concurrency for {what}, got {_describe(v)}")
    for group, size in v.items():
        _non_empty_str("a concurrency group name", group, what)
        _int_at_least(1)(f"concurrency group {group!r}", size, what)


# name -> check(name, value, what); None always passes (it means "the default").
_CHECKS: dict[str, Callable[[str, Any, str], None]] = {
    "num_cpus": _quantity,
    "num_gpus": _quantity,
    "memory": _quantity,
    "resources": _resources,
    "num_returns": _num_returns,
    "num_return_vals": _num_returns,
    "max_retries": _int_at_least(-1, " (-1: forever)"),
    "max_restarts": _int_at_least(-1, " (-1: forever)"),
    "max_task_retries": _int_at_least(-1, " (-1: forever)"),
    "max_calls": _int_at_least(0, " (0: no limit)"),
    "max_concurrency": _int_at_least(1),
    "retry_exceptions": _retry_exceptions,
    "scheduling_strategy": _strategy,
    "lifetime": _lifetime,
    "name": _of_type(str, "a str"),
    "namespace": _non_empty_str,
    "concurrency_group": _non_empty_str,
    "concurrency_groups": _concurrency_groups,
    "sync_methods_on_loop": _of_type(bool, "a bool"),
    "get_if_exists": _of_type(bool, "a bool"),
    "runtime_env": _of_type(dict, "a dict"),
    "accelerator_type": _non_empty_str,
}


def _unknown(name: Any, allowed: set[str], what: str) -> ValueError:
    hint = ""
    close = difflib.get_close_matches(str(name), sorted(allowed), n=1)
    if name in _BELONGS:
        hint = f" ({name} applies to {_BELONGS[name]} only)"
    elif close:
        hint = f" (did you mean {close[0]!r}?)"
    return ValueError(
        f"unknown option {name!r} for {what}{hint}; valid options are: {', '.join(sorted(allowed - {'num_return_vals'}))}"
    )


def check_names(names: Any, allowed: set[str], what: str) -> None:
    """Only the names (``@remote(...)`` before it knows whether a function or a class follows).

    Raises:
        ValueError: an unknown option name.
    """
    for name in names:
        if name not in allowed:
            raise _unknown(name, allowed, what)


def validate(options: dict[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    """Check names, types and values; return a normalized copy.

    Raises:
        ValueError: unknown option name or a bad value (negative resources, ...).
        TypeError: a value of the wrong type (``num_cpus="x"``).
    """
    out = dict(options)
    check_names(out, allowed, what)
    for name, value in out.items():
        if value is not None:
            check = _CHECKS.get(name)
            if check is not None:
                check(name, value, what)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                out[name] = int(value)  # numpy ints become plain ones (they travel as msgpack)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool | float | int):
                out[name] = float(value)
    if "num_return_vals" in out:
        warnings.warn(
            "num_return_vals is the Ray 0.x spelling; use num_returns", DeprecationWarning, stacklevel=user_stacklevel()
        )
        out["num_returns"] = out.pop("num_return_vals")
    return out


def resources_of(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    """The resource request a task or actor makes."""
    req: dict[str, float] = {}
    cpus = options.get("num_cpus")
    cpus = default_cpus if cpus is None else cpus
    if cpus:
        req["CPU"] = float(cpus)
    if options.get("num_gpus"):
        req["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        req["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        if v:
            req[k] = float(v)
    if options.get("accelerator_type"):
        key = placement.ACCELERATOR_PREFIX + options["accelerator_type"]
        req[key] = max(req.get(key, 0.0), ACCELERATOR_AMOUNT)  # an explicit larger amount stands
    return req
