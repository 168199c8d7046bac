"""Validation of ``@remote(...)`` / ``.options(...)`` keywords, at the call site (SPEC 4)."""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "num_returns", "max_retries", "retry_exceptions",
    "name", "scheduling_strategy", "memory", "runtime_env", "num_return_vals",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries", "max_concurrency",
    "name", "namespace", "lifetime", "get_if_exists", "scheduling_strategy", "memory", "runtime_env",
}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries", "num_return_vals"}


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line, outside asyncray."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def validate(options: dict[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    """Check names and values; return a normalized copy.

    Raises:
        ValueError: unknown option name or a bad value (negative resources, ...).
    """
    out = dict(options)
    for name in out:
        if name not in allowed:
            raise ValueError(
                f"unknown option {name!r} for {what}; valid options are: {', '.join(sorted(allowed))}"
            )
    if "num_return_vals" in out:
        warnings.warn(
            "num_return_vals is the Ray 0.x spelling; use num_returns", DeprecationWarning, stacklevel=user_stacklevel()
        )
        out["num_returns"] = out.pop("num_return_vals")
    for name in ("num_cpus", "num_gpus", "memory"):
        v = out.get(name)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0):
            raise ValueError(f"{name} must be a number >= 0 for {what}, got {v!r}")
    res = out.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise ValueError(f"resources must be a dict of name -> amount for {what}, got {type(res).__name__}")
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus, not resources={{{k!r}: ...}}, for {what}")
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"resource {k!r} must be a number >= 0 for {what}, got {v!r}")
    nr = out.get("num_returns")
    if nr is not None and (not isinstance(nr, int) or isinstance(nr, bool) or nr < 0):
        raise ValueError(f"num_returns must be an int >= 0 for {what}, got {nr!r}")
    for name in ("max_retries", "max_restarts", "max_task_retries"):
        v = out.get(name)
        if v is not None and (not isinstance(v, int) or v < -1):
            raise ValueError(f"{name} must be an int >= -1 (-1: forever) for {what}, got {v!r}")
    mc = out.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1 for {what}, got {mc!r}")
    strategy = out.get("scheduling_strategy")
    if strategy is not None and strategy not in ("DEFAULT", "SPREAD"):
        from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not isinstance(strategy, NodeAffinitySchedulingStrategy):
            raise ValueError(
                f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy for {what}, "
                f"got {strategy!r}"
            )
    lt = out.get("lifetime")
    if lt not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or None for {what}, got {lt!r}")
    re_ = out.get("retry_exceptions")
    exc_list = isinstance(re_, list | tuple) and all(isinstance(e, type) and issubclass(e, BaseException) for e in re_)
    if re_ is not None and not isinstance(re_, bool) and not exc_list:
        raise ValueError(f"retry_exceptions must be a bool or a list of exception classes for {what}")
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
    return req
