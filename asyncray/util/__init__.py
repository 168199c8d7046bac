"""Helpers on top of tasks and actors: ActorPool, a distributed Queue and a multiprocessing Pool, as in Ray."""

from asyncray.util import multiprocessing
from asyncray.util.actor_pool import ActorPool
from asyncray.util.multiprocessing import as_completed, map_unordered
from asyncray.util.progress import progress
from asyncray.util.queue import Empty, Full, Queue

__all__ = ["ActorPool", "Empty", "Full", "Queue", "as_completed", "map_unordered", "multiprocessing", "progress"]
