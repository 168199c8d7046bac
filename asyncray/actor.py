"""Ray's ``ray.actor`` namespace: ``exit_actor()`` and the actor classes' public names.

``import asyncray as ray`` then ``ray.actor.exit_actor()`` inside an actor method ends the
actor gracefully, as in Ray: the method that called it and every call that has not started
yet fail with ``ActorDiedError`` ("it exited via exit_actor()"), calls already running
finish, the actor's ``atexit`` handlers run, and the actor is not restarted whatever its
``max_restarts``. ``handle.__ray_terminate__.remote()`` does the same from outside, queued
behind the calls made before it.
"""

from __future__ import annotations

from typing import NoReturn

from asyncray._actor.handle import ActorClass, ActorHandle, ActorMethod
from asyncray.exceptions import ActorClassInheritanceException


class ActorExit(BaseException):
    """Raised by ``exit_actor()`` to unwind the calling method.

    A ``BaseException``, like the ``SystemExit`` Ray raises, so that ``except Exception`` in
    user code does not swallow it; not a ``SystemExit``, which asyncio re-raises out of the
    event loop when it escapes a background task.
    """


def exit_actor() -> NoReturn:
    """End the current actor gracefully (see the module docstring).

    Raises:
        ActorExit: always, inside an actor: let it propagate.
        TypeError: called outside an actor (a driver or a task); use ``asyncray.kill(handle)``.
    """
    from asyncray._worker import actor_host  # the worker side loads only in workers

    host = actor_host.current_host()
    if host is None:
        raise TypeError(
            "exit_actor() can only be called inside an actor (this process runs none); "
            "to end an actor from outside, use asyncray.kill(handle) or handle.__ray_terminate__.remote()"
        )
    raise host.request_exit()


__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorExit", "ActorHandle", "ActorMethod", "exit_actor"]
