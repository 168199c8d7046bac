"""The process's current runtime core (one per process, like a Ray worker).

Kept in one place so that unpickling an ObjectRef or an actor handle can find the core
that should track it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncray._client.core import Core

_core: Core | None = None


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What is running right now in this thread or asyncio task."""

    task_id: bytes
    name: str
    actor_id: bytes | None = None
    job_id: bytes = b""  # the job (driver) the task belongs to; empty: this process's own


current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("asyncray_task", default=None)


def current_job_id(default: bytes) -> bytes:
    """The job of whatever runs now: the running task's (or its actor's), else ``default``."""
    task = current_task.get()
    return task.job_id if task is not None and task.job_id else default


def set_core(core: Core | None) -> None:
    """Install (or clear) the process's core."""
    global _core
    _core = core


def get_core() -> Core | None:
    """The process's core, or None before ``init``."""
    return _core
