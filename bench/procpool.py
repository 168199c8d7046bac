"""Python's own ``concurrent.futures.ProcessPoolExecutor`` behind the few calls the task workloads use.

The third peer of ``bench/run.py`` (framework name ``procpool``): the workloads in ``workloads.py``
marked ``pool=True`` run unchanged on this module, with the same task bodies and counts as on
asyncray and Ray. Nothing here needs Ray or asyncray.

- ``init(num_cpus=N)``: ``ProcessPoolExecutor(max_workers=N)`` with the default start method
  (``fork`` on Linux before Python 3.14: workers are started on demand by the first submits, so
  ``init`` to first task includes starting one worker).
- ``remote(fn).remote(*args)``: ``executor.submit(fn, *args)``, a ``Future``.
- ``get(future)`` / ``get([futures])``: ``future.result()`` of each, in order.
- ``shutdown()``: ``executor.shutdown(wait=True)`` (joins the workers).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

_executor: ProcessPoolExecutor | None = None


def start_method() -> str:
    return multiprocessing.get_start_method()


def init(num_cpus: int | None = None, **_ignored: Any) -> None:
    global _executor
    if _executor is not None:
        raise RuntimeError("procpool: init() called twice")
    _executor = ProcessPoolExecutor(max_workers=num_cpus)


def shutdown() -> None:
    global _executor
    ex, _executor = _executor, None
    if ex is not None:
        ex.shutdown(wait=True)


class RemoteFunction:
    """``f.remote(*args)`` submits ``fn(*args)`` to the pool started by ``init``."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Future[Any]:
        if _executor is None:
            raise RuntimeError("procpool: init() first")
        return _executor.submit(self._fn, *args, **kwargs)


def remote(fn: Any) -> RemoteFunction:
    return RemoteFunction(fn)


def get(refs: Any, timeout: float | None = None) -> Any:
    if isinstance(refs, list):
        return [r.result(timeout) for r in refs]
    return refs.result(timeout)
