"""Identifiers: a random per-process prefix plus a counter.

Unique across the cluster without coordination, and far cheaper than ``os.urandom`` per id
(which costs a system call on the submission hot path).
"""

from __future__ import annotations

import hashlib
import itertools
import os

ID_BYTES = 16
_prefix = os.urandom(8)
_counter = itertools.count(1)
_pid = os.getpid()


def new_id() -> bytes:
    """A fresh id, unique in the cluster."""
    global _prefix, _counter, _pid
    if os.getpid() != _pid:  # a forked child must not repeat its parent's ids
        _prefix, _counter, _pid = os.urandom(8), itertools.count(1), os.getpid()
    return _prefix + (next(_counter) << 16).to_bytes(8, "big")


def return_id(task_id: bytes, index: int) -> bytes:
    """The object id of a task's ``index``-th return value (the low 16 bits of a task id are 0)."""
    return task_id[:-2] + index.to_bytes(2, "big")


def short(id_: bytes) -> str:
    """Eight hex digits standing for an id in logs and messages (ids share prefixes, so hash)."""
    return hashlib.blake2b(id_, digest_size=4).hexdigest()
