"""Where work goes: pure choices over the head's view of the cluster.

One module for every placement decision, used by the task submitter (which node to ask for a
lease), the node (send a request it cannot serve now to another node: spillback) and the
head's actor manager (which node hosts an actor). No I/O, no clock: nodes in, a choice out;
tested without sockets (tests/test_placement.py, with hypothesis properties).

Strategies, as Ray spells them: the default (the submitter's own node, which spills to others
when full), ``"SPREAD"`` (round robin over live nodes), and node affinity
(``NodeAffinitySchedulingStrategy(node_id, soft)``: that node; soft falls back to the default
when it is dead or unknown, hard fails). Custom resources are just resources: a node fits a
request when it has at least every positive amount asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asyncray._wire.messages import NodeView

# Resource amounts are floats (num_cpus=0.5): compare with this much slack.
EPS = 1e-9
# A node with accelerators of type X offers the custom resource "accelerator_type:X" (as in
# Ray); a task's ``accelerator_type="X"`` option asks for a little of it.
ACCELERATOR_PREFIX = "accelerator_type:"
# A node that is full may point a lease request to another node, at most this many times.
MAX_REDIRECTS = 3

# Lease request labels: where a request came from, and whether it may be spilled elsewhere.
LABEL_DEFAULT = ""
LABEL_SPREAD = "affinity:spread"
LABEL_HARD_AFFINITY = "affinity:hard"
LABEL_SOFT_AFFINITY = "affinity:soft"
LABEL_REDIRECTED = "affinity:redirected"
LABEL_ACTOR = "actor"
LABEL_PINNED_ACTOR = "affinity:actor"


class Unplaceable(Exception):
    """No node may take this work, and waiting will not help (a hard affinity to a dead node)."""


@dataclass(frozen=True, slots=True)
class Affinity:
    """Run on this node (hex id); ``soft``: elsewhere when it is dead or unknown."""

    node_id: str
    soft: bool = False

    @classmethod
    def of(cls, strategy: Any) -> Affinity | None:
        """From a ``NodeAffinitySchedulingStrategy`` or its wire form ``{"node_id", "soft"}``."""
        if strategy is None or isinstance(strategy, str):
            return None
        if isinstance(strategy, Mapping):
            return cls(str(strategy["node_id"]), bool(strategy.get("soft", False)))
        return cls(str(strategy.node_id), bool(strategy.soft))


def fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    """True when ``have`` covers every positive amount in ``need``."""
    return all(have.get(k, 0.0) + EPS >= v for k, v in need.items() if v > 0)


def live(nodes: Sequence[NodeView]) -> list[NodeView]:
    """The nodes that are alive, in the head's order."""
    return [n for n in nodes if n.alive]


def best_fit(nodes: Sequence[NodeView], need: Mapping[str, float]) -> NodeView | None:
    """A live node whose totals fit ``need``, preferring the most free CPU; None if none ever fits."""
    able = [n for n in nodes if n.alive and fits(need, n.resources)]
    if not able:
        return None
    return max(able, key=lambda n: n.available.get("CPU", 0.0))


def find(nodes: Sequence[NodeView], node_id_hex: str) -> NodeView | None:
    """The live node with this hex id, if any."""
    return next((n for n in nodes if n.alive and n.node_id.hex() == node_id_hex), None)


@dataclass(frozen=True, slots=True)
class LeaseTarget:
    """Which node a submitter asks for a lease (None: its own node), and the request's label."""

    node: NodeView | None
    label: str


def lease_target(strategy: Any, nodes: Sequence[NodeView], spread_turn: int) -> LeaseTarget:
    """Where a submitter asks for a worker, for a task with this scheduling strategy.

    ``spread_turn`` counts the SPREAD requests made so far (round robin over live nodes).

    Raises:
        Unplaceable: a hard node affinity to a node that is dead or unknown.
    """
    if strategy is None:
        return LeaseTarget(None, LABEL_DEFAULT)
    alive = live(nodes)
    if strategy == "SPREAD":
        if not alive:
            return LeaseTarget(None, LABEL_DEFAULT)
        return LeaseTarget(alive[spread_turn % len(alive)], LABEL_SPREAD)
    affinity = Affinity.of(strategy)
    if affinity is None:
        return LeaseTarget(None, LABEL_DEFAULT)
    target = find(alive, affinity.node_id)
    if target is None:
        if affinity.soft:
            return LeaseTarget(None, LABEL_DEFAULT)
        raise Unplaceable(f"node {affinity.node_id} (NodeAffinitySchedulingStrategy, soft=False) is dead or unknown")
    return LeaseTarget(target, LABEL_SOFT_AFFINITY if affinity.soft else LABEL_HARD_AFFINITY)


def may_spill(label: str) -> bool:
    """Requests placed on purpose (affinity, SPREAD, already redirected) stay where they were sent."""
    return not label.startswith("affinity:")


def spill_target(
    need: Mapping[str, float], total: Mapping[str, float], available: Mapping[str, float],
    nodes: Sequence[NodeView], own_node_id: bytes, label: str,
) -> NodeView | None:
    """Another node for a lease request this node should not queue, or None to queue it here.

    A request that fits this node's totals but not what is free now moves only when another
    live node has it free right now (work spills when the local node is full); one that can
    never fit here goes to a node it fits, free or not.
    """
    if not may_spill(label):
        return None
    need = {k: v for k, v in need.items() if v > 0}
    fits_here_ever = fits(need, total)
    if fits_here_ever and fits(need, available):
        return None
    others = [n for n in nodes if n.alive and n.node_id != own_node_id]
    free = [n for n in others if fits(need, n.available)]
    if free:
        return max(free, key=lambda n: n.available.get("CPU", 0.0))
    if not fits_here_ever:
        return next((n for n in others if fits(need, n.resources)), None)
    return None


def actor_node(nodes: Sequence[NodeView], need: Mapping[str, float], affinity: Affinity | None) -> NodeView:
    """The node that should host an actor: its affinity's (when alive), else the best fit.

    Raises:
        Unplaceable: a hard affinity to a dead or unknown node, or no node that could ever fit it.
    """
    if affinity is not None:
        node = find(nodes, affinity.node_id)
        if node is not None:
            return node
        if not affinity.soft:
            raise Unplaceable(f"its node {affinity.node_id[:8]} (NodeAffinitySchedulingStrategy) is dead or unknown")
    node = best_fit(nodes, need)
    if node is None:
        kinds = [k.removeprefix(ACCELERATOR_PREFIX) for k in need if k.startswith(ACCELERATOR_PREFIX)]
        missing = [k for k in kinds if not any(n.alive and n.resources.get(ACCELERATOR_PREFIX + k) for n in nodes)]
        if missing:
            raise Unplaceable(f"no node has accelerator_type={missing[0]!r} (the resource {ACCELERATOR_PREFIX + missing[0]!r})")
        raise Unplaceable(f"no node has the resources it needs ({dict(need)})")
    return node
