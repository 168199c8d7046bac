"""Helpers on top of tasks and actors: ActorPool and a distributed Queue, as in Ray."""

from asyncray.util.actor_pool import ActorPool
from asyncray.util.progress import progress
from asyncray.util.queue import Empty, Full, Queue

__all__ = ["ActorPool", "Empty", "Full", "Queue", "progress"]
