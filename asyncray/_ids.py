"""Identifiers. Random bytes are cheap (0.6 us) and need no coordination."""

from __future__ import annotations

import os

ID_BYTES = 16


def new_id() -> bytes:
    """A fresh random id."""
    return os.urandom(ID_BYTES)


def return_id(task_id: bytes, index: int) -> bytes:
    """The object id of a task's ``index``-th return value."""
    return task_id[:-2] + index.to_bytes(2, "big")


def short(id_: bytes) -> str:
    """First hex digits of an id, for logs and prefixes."""
    return id_.hex()[:8]
