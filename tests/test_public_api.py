"""The public surface: __all__ matches the exports, aio twins match the facade."""

from __future__ import annotations

import inspect

import asyncray
import asyncray.aio
import asyncray.exceptions


def test_all_lists_exactly_the_public_names():
    for module in (asyncray, asyncray.aio, asyncray.exceptions):
        defined_here = {
            n for n, obj in vars(module).items()
            if not n.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == module.__name__
        }
        assert set(module.__all__) >= defined_here, module
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"


def test_every_aio_function_has_a_facade_twin_with_the_same_parameters():
    for name in asyncray.aio.__all__:
        twin = getattr(asyncray, name)
        mine = inspect.signature(getattr(asyncray.aio, name))
        theirs = inspect.signature(twin)
        assert list(mine.parameters) == list(theirs.parameters), name
        assert inspect.iscoroutinefunction(getattr(asyncray.aio, name)) or inspect.isasyncgenfunction(
            getattr(asyncray.aio, name)
        ), name


def test_errors_report_the_public_module():
    for name in asyncray.exceptions.__all__:
        assert getattr(asyncray.exceptions, name).__module__ == "asyncray.exceptions"
    assert asyncray.GetTimeoutError.__mro__[1:3] == (asyncray.AsyncRayError, TimeoutError)


def test_version():
    assert asyncray.__version__


def test_util_is_reachable_from_the_package_as_in_ray():
    """``import ray`` gives ``ray.util``; so does ``import asyncray as ray`` (loaded on first use)."""
    import subprocess
    import sys

    code = "import asyncray as ray; print(ray.util.ActorPool.__name__, ray.util.multiprocessing.Pool.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["ActorPool", "Pool"]
