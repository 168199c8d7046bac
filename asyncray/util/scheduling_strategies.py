"""Where a task or actor may run, beyond "anywhere its resources fit" (as Ray's module)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SPREAD", "NodeAffinitySchedulingStrategy"]

SPREAD = "SPREAD"


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node with ``node_id`` (hex, as ``get_runtime_context().get_node_id()``).

    With ``soft=True`` the task goes elsewhere when that node is dead or unknown;
    with ``soft=False`` it fails with TaskUnschedulableError instead.
    """

    node_id: str
    soft: bool = False
