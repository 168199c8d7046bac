"""The error hierarchy (SPEC section 4).

``AsyncRayError`` is the root, with three families: failures of the system (a worker,
node, actor or object went away), failures of user code (``TaskError``), and usage errors
raised at the call site.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "ActorClassInheritanceException",
    "ActorDiedError",
    "AsyncRayError",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "OutOfMemoryError",
    "SerializationError",
    "SystemFailure",
    "TaskCancelledError",
    "TaskError",
    "TaskUnschedulableError",
    "WorkerCrashedError",
]


class AsyncRayError(Exception):
    """Base of every error asyncray raises."""


# ---------------------------------------------------------------- system failures
class SystemFailure(AsyncRayError):
    """Something the runtime depends on went away; user code did not raise."""


class WorkerCrashedError(SystemFailure):
    """The worker process died while running the task, and retries are used up."""


class ActorDiedError(SystemFailure):
    """The actor is dead: killed, crashed, its constructor raised, or out of restarts."""


class NodeDiedError(SystemFailure):
    """The node that ran the task or held the object stopped answering."""


class ObjectLostError(SystemFailure):
    """Every copy of the object is gone and it cannot be rebuilt."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of the object is gone, and running the task that made it again failed."""


class OutOfMemoryError(SystemFailure):
    """The object store is full even after spilling to disk."""


# ---------------------------------------------------------------- outcomes of a call
class GetTimeoutError(AsyncRayError, TimeoutError):
    """``get``/``wait`` gave up after its ``timeout``; the task itself goes on."""


class TaskCancelledError(AsyncRayError):
    """The task was cancelled with ``cancel()`` before it finished."""


class TaskUnschedulableError(AsyncRayError):
    """No node in the cluster has the resources the task asks for."""


class SerializationError(AsyncRayError, TypeError):
    """A function, argument or value could not be pickled; the message names which."""


class TaskError(AsyncRayError):
    """User code raised. Raised by ``get``/``await`` as an instance of the original class too.

    Attributes:
        cause: the original exception (rebuilt in the caller's process).
        function_name: the task or actor method that raised.
        traceback_text: the traceback as formatted where it ran.
    """

    cause: BaseException | None
    function_name: str
    traceback_text: str

    def __init__(self, message: str = "", *, function_name: str = "", traceback_text: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.function_name = function_name
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        base = str(self.cause) if self.cause is not None else (self.args[0] if self.args else "")
        where = f"{self.function_name}() raised {type(self.cause).__name__ if self.cause else 'an error'}"
        return f"{base}\n\n{where}; remote traceback:\n{self.traceback_text}".rstrip()

    def __reduce__(self) -> Any:
        cause = self.cause
        if cause is None:
            return (_make_task_error, (None, self.function_name, self.traceback_text))
        # Rebuild the cause without calling its __init__: user exceptions often take other
        # arguments than the ``args`` they store, and would not unpickle the usual way.
        state = dict(getattr(cause, "__dict__", {}))
        return (_rebuild_task_error, (type(cause), cause.args, state, self.function_name, self.traceback_text))

    @classmethod
    def wrap(cls, cause: BaseException, function_name: str, traceback_text: str) -> TaskError:
        """Build the error raised to the caller: a TaskError that is also a ``type(cause)``."""
        return _make_task_error(cause, function_name, traceback_text)


@functools.lru_cache(maxsize=256)
def _dual_class(cause_cls: type[BaseException]) -> type[TaskError]:
    if issubclass(cause_cls, TaskError):
        return cause_cls
    name = f"TaskError({cause_cls.__name__})"
    try:
        return type(name, (TaskError, cause_cls), {"__module__": "asyncray.exceptions"})
    except TypeError:  # layout conflict (some builtins): fall back to the plain error
        return TaskError


def _rebuild_task_error(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any], function_name: str, traceback_text: str
) -> TaskError:
    cause = cls.__new__(cls)
    cause.args = args
    try:
        cause.__dict__.update(state)
    except AttributeError:
        pass
    return _make_task_error(cause, function_name, traceback_text)


def _make_task_error(cause: BaseException | None, function_name: str, traceback_text: str) -> TaskError:
    """Instantiate the dual class without calling the user's ``__init__`` (its signature is unknown)."""
    cls = _dual_class(type(cause)) if cause is not None else TaskError  # type: ignore[arg-type]  # classes hash
    err = Exception.__new__(cls)
    err.args = cause.args if cause is not None else ()
    err.cause = cause
    err.function_name = function_name
    err.traceback_text = traceback_text
    if cause is not None:
        try:  # keep attributes the user's class set (errno, custom fields)
            err.__dict__.update({k: v for k, v in vars(cause).items() if k not in err.__dict__})
        except TypeError:
            pass
    return err


class ActorClassInheritanceException(TypeError):
    """A class tried to subclass an actor class (a class decorated with ``@remote``)."""
