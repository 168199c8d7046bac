"""Placement without sockets: which node a lease request, a spilled request and an actor go to."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncray import _placement as placement
from asyncray._wire.messages import NodeView
from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def node(i: int, cpus: float = 2, free: float | None = None, alive: bool = True, **custom: float) -> NodeView:
    total = {"CPU": float(cpus), **custom}
    available = {"CPU": float(cpus if free is None else free), **custom}
    return NodeView(node_id=bytes([i]) * 4, address=f"10.0.0.{i}:1", resources=total, available=available, alive=alive)


A, B, C = node(1), node(2, free=0), node(3, cpus=8, gpu=1)


# ---------------------------------------------------------------- examples
def test_default_strategy_asks_the_own_node():
    assert placement.lease_target(None, [A, B], 0) == placement.LeaseTarget(None, placement.LABEL_DEFAULT)


def test_spread_goes_round_robin_over_live_nodes():
    nodes = [A, node(9, alive=False), B, C]
    picked = [placement.lease_target("SPREAD", nodes, turn).node for turn in range(6)]
    assert picked == [A, B, C, A, B, C]
    assert placement.lease_target("SPREAD", [], 0).node is None


def test_hard_affinity_to_a_dead_node_is_unplaceable_and_soft_falls_back():
    dead = node(7, alive=False)
    hard = NodeAffinitySchedulingStrategy(node_id=dead.node_id.hex(), soft=False)
    with pytest.raises(placement.Unplaceable, match="soft=False"):
        placement.lease_target(hard, [A, dead], 0)
    soft = NodeAffinitySchedulingStrategy(node_id=dead.node_id.hex(), soft=True)
    assert placement.lease_target(soft, [A, dead], 0) == placement.LeaseTarget(None, placement.LABEL_DEFAULT)
    alive = NodeAffinitySchedulingStrategy(node_id=C.node_id.hex(), soft=False)
    assert placement.lease_target(alive, [A, C], 0) == placement.LeaseTarget(C, placement.LABEL_HARD_AFFINITY)


def test_a_full_node_spills_to_a_node_with_room_and_keeps_what_fits_now():
    need = {"CPU": 1.0}
    # fits here now: stays
    assert placement.spill_target(need, A.resources, A.available, [A, C], A.node_id, "") is None
    # full here, C has room
    assert placement.spill_target(need, B.resources, B.available, [B, C], B.node_id, "") == C
    # full here and nowhere else free: queue here
    assert placement.spill_target(need, B.resources, B.available, [B, node(4, free=0)], B.node_id, "") is None
    # placed on purpose: never moves
    assert placement.spill_target(need, B.resources, B.available, [B, C], B.node_id, placement.LABEL_SPREAD) is None


def test_a_request_that_never_fits_here_goes_where_it_fits_even_if_busy():
    busy_gpu = node(5, free=0, gpu=1)
    need = {"CPU": 1.0, "gpu": 1.0}
    assert placement.spill_target(need, A.resources, A.available, [A, busy_gpu], A.node_id, "") == busy_gpu
    assert placement.spill_target(need, A.resources, A.available, [A], A.node_id, "") is None


def test_actor_node_prefers_its_affinity_then_the_best_fit():
    assert placement.actor_node([A, C], {"CPU": 1}, placement.Affinity(A.node_id.hex())) == A
    assert placement.actor_node([A, C], {"CPU": 1}, None) == C  # the most free CPU
    assert placement.actor_node([A, C], {"gpu": 1}, None) == C  # custom resources are resources
    with pytest.raises(placement.Unplaceable, match="no node has the resources"):
        placement.actor_node([A, B], {"gpu": 1}, None)
    with pytest.raises(placement.Unplaceable, match="dead or unknown"):
        placement.actor_node([A], {"CPU": 1}, placement.Affinity("00" * 4))
    assert placement.actor_node([A], {"CPU": 1}, placement.Affinity("00" * 4, soft=True)) == A


def test_affinity_reads_both_the_strategy_object_and_its_wire_form():
    strategy = NodeAffinitySchedulingStrategy(node_id="ab", soft=True)
    assert placement.Affinity.of(strategy) == placement.Affinity("ab", True)
    assert placement.Affinity.of({"node_id": "ab", "soft": False}) == placement.Affinity("ab", False)
    assert placement.Affinity.of(None) is None and placement.Affinity.of("SPREAD") is None


# ---------------------------------------------------------------- properties
amounts = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])
nodes_strategy = st.lists(
    st.builds(
        lambda i, cpus, free_share, alive, gpu: NodeView(
            node_id=bytes([i]), address=f"n{i}:1",
            resources={"CPU": cpus, "gpu": gpu}, available={"CPU": cpus * free_share, "gpu": gpu * free_share},
            alive=alive,
        ),
        st.integers(0, 255), amounts, st.sampled_from([0.0, 0.5, 1.0]), st.booleans(), amounts,
    ),
    max_size=6, unique_by=lambda n: n.node_id,
)
needs = st.fixed_dictionaries({"CPU": amounts}, optional={"gpu": amounts})


@settings(max_examples=300, deadline=None)
@given(nodes_strategy, needs)
def test_best_fit_is_a_live_node_that_fits_with_the_most_free_cpu(nodes, need):
    chosen = placement.best_fit(nodes, need)
    able = [n for n in nodes if n.alive and placement.fits(need, n.resources)]
    if not able:
        assert chosen is None
        return
    assert chosen in able
    assert chosen.available["CPU"] == max(n.available["CPU"] for n in able)


@settings(max_examples=300, deadline=None)
@given(nodes_strategy, needs, st.integers(0, 5))
def test_spill_target_never_picks_itself_or_a_dead_node_and_only_moves_what_must(nodes, need, here_index):
    if not nodes:
        return
    here = nodes[here_index % len(nodes)]
    target = placement.spill_target(need, here.resources, here.available, nodes, here.node_id, "")
    if placement.fits(need, here.resources) and placement.fits(need, here.available):
        assert target is None  # what fits now is never sent away
    if target is not None:
        assert target.alive and target.node_id != here.node_id
        assert placement.fits(need, target.available) or (
            not placement.fits(need, here.resources) and placement.fits(need, target.resources)
        )


@settings(max_examples=200, deadline=None)
@given(nodes_strategy, st.integers(0, 100))
def test_spread_visits_every_live_node_once_per_round(nodes, start):
    alive = [n for n in nodes if n.alive]
    picked = [placement.lease_target("SPREAD", nodes, start + k).node for k in range(len(alive))]
    assert sorted(n.node_id for n in picked if n is not None) == sorted(n.node_id for n in alive)
