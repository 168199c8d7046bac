"""Reading tables that other threads (and finalizers) change while we read them.

The client core's tables (objects, ref counts, live tasks, actor channels) are written from
the loop thread, from user threads (``.remote()``, ``put``) and from ``__del__`` of refs and
handles, which can run in the middle of any allocation when the garbage collector kicks in.
Iterating such a dict in Python, or even ``list(d.items())`` (it allocates a tuple per
item, and an allocation can run a finalizer), may therefore see it change size mid-way:
``RuntimeError: dictionary changed size during iteration``.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def snapshot(table: dict[K, V]) -> dict[K, V]:
    """A consistent copy of a dict that other threads or finalizers may change.

    ``dict.copy`` runs in C without running Python code or allocating GC-tracked objects
    while it walks the table, so under the GIL no other thread and no finalizer can change
    the dict half-way through. Iterate the copy, not the original.
    """
    return table.copy()
