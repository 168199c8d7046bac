"""Pure unit tests for the node's LocalScheduler: events in, actions out (STYLE sections 3 and 8).

No loop, no sockets, no processes: the test plays the node service, carrying out the
actions by hand (registering started workers, returning leases, reporting deaths).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from asyncray._node.scheduler import (
    Grant,
    KillWorker,
    LeaseRequest,
    LocalScheduler,
    Reclaim,
    Reject,
    StartWorker,
    WorkerState,
)
from asyncray._placement import fits as _fits


def _id_factory() -> Callable[[], bytes]:
    counter = itertools.count(1)
    return lambda: f"w{next(counter)}".encode()


def make(cpus: float = 2.0, min_workers: int = 0, timeout_s: float = 30.0, **extra: float) -> LocalScheduler:
    return LocalScheduler(
        total={"CPU": cpus, **extra},
        min_workers=min_workers,
        new_worker_id=_id_factory(),
        idle_worker_timeout_s=timeout_s,
    )


def req(rid: int, cpu: float = 1.0, client: Any = "c1", dedicated: bool = False, **extra: float) -> LeaseRequest:
    return LeaseRequest(client=client, rid=rid, resources={"CPU": cpu, **extra}, dedicated=dedicated)


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def started(actions: list[Any]) -> list[bytes]:
    return [a.worker_id for a in of(actions, StartWorker)]


def register_all(s: LocalScheduler, worker_ids: list[bytes], now: float = 0.0) -> list[Any]:
    """Play the service: every started worker comes up and registers."""
    actions: list[Any] = []
    for i, wid in enumerate(worker_ids):
        actions += s.worker_registered(wid, pid=1000 + i, address=f"127.0.0.1:{5000 + i}", now=now)
    return actions


def pool(s: LocalScheduler, n: int, now: float = 0.0) -> list[bytes]:
    """Start and register ``n`` workers by way of a prestart."""
    s.min_workers = n
    wids = started(s.prestart())
    assert register_all(s, wids, now=now) == []
    return wids


def grant_of(actions: list[Any]) -> Grant:
    grants = of(actions, Grant)
    assert len(grants) == 1, actions
    return grants[0]


# ---------------------------------------------------------------- pool start
def test_prestart_starts_min_workers() -> None:
    s = make(min_workers=3)
    actions = s.prestart()
    assert all(isinstance(a, StartWorker) for a in actions)
    wids = started(actions)
    assert len(wids) == 3 and len(set(wids)) == 3
    assert {w.state for w in s.workers.values()} == {WorkerState.STARTING}
    assert s.leases == {} and s.available == {"CPU": 2.0}


def test_prestart_with_zero_min_workers_does_nothing() -> None:
    s = make(min_workers=0)
    assert s.prestart() == []
    assert s.workers == {}


def test_registered_worker_becomes_idle_with_its_address() -> None:
    s = make(min_workers=1)
    (wid,) = started(s.prestart())
    assert s.worker_registered(wid, pid=42, address="127.0.0.1:9", now=5.0) == []
    rec = s.workers[wid]
    assert (rec.state, rec.pid, rec.address, rec.idle_since) == (WorkerState.IDLE, 42, "127.0.0.1:9", 5.0)


def test_registration_of_unknown_worker_kills_it() -> None:
    s = make()
    assert s.worker_registered(b"stranger", pid=1, address="a", now=0.0) == [KillWorker(b"stranger")]
    assert b"stranger" not in s.workers


def test_repeated_registration_does_not_free_a_leased_worker() -> None:
    s = make(cpus=2)
    (wid,) = pool(s, 1)
    grant_of(s.request(req(1, client="a")))
    s.worker_registered(wid, pid=1, address="addr", now=1.0)
    assert s.workers[wid].state is WorkerState.LEASED
    assert of(s.request(req(2, client="b")), Grant) == []


# ---------------------------------------------------------------- leasing
def test_request_without_idle_worker_starts_one_and_is_granted_on_registration() -> None:
    s = make()
    r = req(1)
    actions = s.request(r)
    (wid,) = started(actions)
    assert of(actions, Grant) == []
    assert list(s.queue) == [r]
    assert s.available == {"CPU": 2.0}, "nothing is taken before the grant"

    g = grant_of(s.worker_registered(wid, pid=7, address="addr", now=1.0))
    assert g.request is r
    assert g.worker.worker_id == wid and g.lease.worker_id == wid
    assert g.lease.client == "c1" and g.lease.resources == {"CPU": 1.0}
    assert s.workers[wid].state is WorkerState.LEASED
    assert s.workers[wid].lease_id == g.lease.lease_id
    assert s.leases == {g.lease.lease_id: g.lease}
    assert s.available == {"CPU": 1.0}
    assert not s.queue


def test_request_with_idle_worker_is_granted_at_once() -> None:
    s = make()
    (wid,) = pool(s, 1)
    actions = s.request(req(1))
    assert started(actions) == []
    assert grant_of(actions).worker.worker_id == wid


def test_request_while_a_worker_is_starting_waits_for_it() -> None:
    s = make(min_workers=1)
    (wid,) = started(s.prestart())
    assert s.request(req(1)) == []
    assert grant_of(register_all(s, [wid])).request.rid == 1


def test_lease_ids_are_unique() -> None:
    s = make(cpus=4)
    pool(s, 4)
    ids = [grant_of(s.request(req(i))).lease.lease_id for i in range(4)]
    assert len(set(ids)) == 4 and 0 not in ids


def test_two_leases_fit_a_two_cpu_node_and_the_third_waits_for_a_return() -> None:
    s = make(cpus=2)
    pool(s, 3)
    g1 = grant_of(s.request(req(1)))
    g2 = grant_of(s.request(req(2)))
    assert s.available == {"CPU": 0.0}
    third = s.request(req(3))
    assert of(third, Grant) == [] and started(third) == []
    assert [r.rid for r in s.queue] == [3]

    g3 = grant_of(s.lease_returned(g1.lease.lease_id, now=2.0))
    assert g3.request.rid == 3
    assert s.available == {"CPU": 0.0}
    assert s.lease_returned(g2.lease.lease_id, now=3.0) == []
    assert s.lease_returned(g3.lease.lease_id, now=3.0) == []
    assert s.available == {"CPU": 2.0}
    assert s.leases == {}
    assert {w.state for w in s.workers.values()} == {WorkerState.IDLE}


def test_returned_worker_is_idle_again_and_reused() -> None:
    s = make()
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1)))
    assert s.lease_returned(g.lease.lease_id, now=9.0) == []
    rec = s.workers[wid]
    assert (rec.state, rec.lease_id, rec.idle_since) == (WorkerState.IDLE, 0, 9.0)
    assert grant_of(s.request(req(2))).worker.worker_id == wid


def test_return_with_kill_kills_the_worker() -> None:
    s = make()
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1)))
    assert s.lease_returned(g.lease.lease_id, now=1.0, kill=True) == [KillWorker(wid)]
    assert s.workers[wid].state is WorkerState.DEAD
    assert s.available == {"CPU": 2.0}


def test_return_of_a_dedicated_lease_kills_the_worker() -> None:
    s = make()
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1, dedicated=True)))
    assert g.lease.dedicated
    assert s.lease_returned(g.lease.lease_id, now=1.0) == [KillWorker(wid)]
    assert s.available == {"CPU": 2.0}


def test_unknown_or_repeated_return_is_ignored() -> None:
    s = make()
    pool(s, 1)
    g = grant_of(s.request(req(1)))
    assert s.lease_returned(12345, now=0.0) == []
    assert s.lease_returned(g.lease.lease_id, now=0.0) == []
    assert s.lease_returned(g.lease.lease_id, now=0.0) == []
    assert s.available == {"CPU": 2.0}


def test_custom_resources_are_accounted() -> None:
    s = make(cpus=4, GPU=1.0)
    pool(s, 3)
    g = grant_of(s.request(req(1, GPU=1.0)))
    assert s.available == {"CPU": 3.0, "GPU": 0.0}
    assert of(s.request(req(2, GPU=1.0)), Grant) == []
    assert grant_of(s.request(req(3))).request.rid == 3, "a request that fits is not stuck behind one that doesn't"
    assert grant_of(s.lease_returned(g.lease.lease_id, now=0.0)).request.rid == 2


def test_fractional_resources() -> None:
    s = make(cpus=1)
    pool(s, 3)
    assert grant_of(s.request(req(1, cpu=0.5))).lease.resources == {"CPU": 0.5}
    grant_of(s.request(req(2, cpu=0.5)))
    assert of(s.request(req(3, cpu=0.5)), Grant) == []
    assert s.available["CPU"] == pytest.approx(0.0)


def test_cancel_drops_a_queued_request() -> None:
    s = make(cpus=1)
    pool(s, 2)
    g = grant_of(s.request(req(1, dedicated=True)))
    s.request(req(2, client="c2", dedicated=True))
    assert s.cancel("c2", 2) == []
    assert not s.queue
    assert of(s.lease_returned(g.lease.lease_id, now=0.0), Grant) == []


def test_cancel_only_matches_client_and_rid() -> None:
    s = make(cpus=1)
    pool(s, 1)
    grant_of(s.request(req(1, dedicated=True)))
    s.request(req(2, client="a", dedicated=True))
    s.request(req(2, client="b", dedicated=True))
    s.cancel("a", 2)
    assert [(r.client, r.rid) for r in s.queue] == [("b", 2)]


# ---------------------------------------------------------------- rejects
@pytest.mark.parametrize(
    ("resources", "match"),
    [
        ({"CPU": 3.0}, r"CPU=3 .* more than 2"),
        ({"GPU": 1.0}, r"GPU=1 .* more than 0"),
        ({"CPU": -1.0}, r"'CPU' must not be negative, got -1"),
        ({"CPU": 1.0, "memory": -5.0}, r"'memory' must not be negative"),
        ({"CPU": float("inf")}, r"'CPU' must be a finite number"),
    ],
)
def test_infeasible_or_negative_request_is_rejected_by_name(resources: dict[str, float], match: str) -> None:
    s = make(cpus=2)
    r = LeaseRequest(client="c", rid=1, resources=resources)
    actions = s.request(r)
    assert len(actions) == 1 and isinstance(actions[0], Reject)
    assert actions[0].request is r
    assert re.search(match, actions[0].reason), actions[0].reason
    assert not s.queue and s.workers == {} and s.available == {"CPU": 2.0}


def test_nan_request_is_rejected() -> None:
    s = make(cpus=2)
    pool(s, 2)
    actions = s.request(req(1, cpu=float("nan")))
    assert len(actions) == 1 and isinstance(actions[0], Reject)
    assert grant_of(s.request(req(2))).request.rid == 2


def test_request_for_exactly_the_total_is_feasible() -> None:
    s = make(cpus=2)
    pool(s, 1)
    assert grant_of(s.request(req(1, cpu=2.0))).lease.resources == {"CPU": 2.0}


def test_zero_of_an_absent_resource_is_not_infeasible() -> None:
    s = make(cpus=2)
    pool(s, 1)
    assert grant_of(s.request(req(1, GPU=0.0))).request.rid == 1


# ---------------------------------------------------------------- blocked in get
def test_blocked_lends_the_cpu_and_unblocked_takes_it_back() -> None:
    s = make(cpus=1)
    pool(s, 2)
    outer = grant_of(s.request(req(1, dedicated=True)))
    assert s.request(req(2)) == []

    inner = grant_of(s.blocked(outer.worker.worker_id))
    assert inner.request.rid == 2
    assert s.leases[outer.lease.lease_id].blocked
    assert s.available == {"CPU": 0.0}

    assert s.unblocked(outer.worker.worker_id) == []
    assert not s.leases[outer.lease.lease_id].blocked
    assert s.available == {"CPU": -1.0}, "resuming may overcommit until the inner lease returns"
    assert s.lease_returned(inner.lease.lease_id, now=0.0) == []
    assert s.lease_returned(outer.lease.lease_id, now=0.0) == [KillWorker(outer.worker.worker_id)]
    assert s.available == {"CPU": 1.0}


def test_blocked_starts_a_worker_for_the_queued_request_when_none_is_idle() -> None:
    s = make(cpus=1)
    (wid,) = pool(s, 1)
    grant_of(s.request(req(1, dedicated=True)))
    assert s.request(req(2, dedicated=True)) == []
    (new,) = started(s.blocked(wid))
    assert grant_of(register_all(s, [new])).request.rid == 2


def test_blocked_and_unblocked_are_idempotent() -> None:
    s = make(cpus=2)
    (wid,) = pool(s, 1)
    grant_of(s.request(req(1)))
    s.blocked(wid)
    assert s.blocked(wid) == []
    assert s.available == {"CPU": 2.0}
    s.unblocked(wid)
    assert s.unblocked(wid) == []
    assert s.available == {"CPU": 1.0}


def test_blocked_for_unleased_or_unknown_worker_is_ignored() -> None:
    s = make(cpus=2)
    (wid,) = pool(s, 1)
    assert s.blocked(wid) == [] and s.unblocked(wid) == []
    assert s.blocked(b"nobody") == [] and s.unblocked(b"nobody") == []
    assert s.available == {"CPU": 2.0}


def test_returning_a_blocked_lease_does_not_give_its_cpu_back_twice() -> None:
    s = make(cpus=1)
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1)))
    s.blocked(wid)
    assert s.available == {"CPU": 1.0}
    s.lease_returned(g.lease.lease_id, now=0.0)
    assert s.available == {"CPU": 1.0}


def test_blocked_lends_only_cpu() -> None:
    s = make(cpus=2, GPU=1.0)
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1, GPU=1.0)))
    s.blocked(wid)
    assert s.available == {"CPU": 2.0, "GPU": 0.0}
    s.lease_returned(g.lease.lease_id, now=0.0)
    assert s.available == {"CPU": 2.0, "GPU": 1.0}


# ---------------------------------------------------------------- worker death
def test_dead_leased_worker_releases_its_resources_and_is_replaced() -> None:
    s = make(cpus=1)
    wids = pool(s, 2)
    g = grant_of(s.request(req(1)))
    actions = s.worker_died(g.worker.worker_id)
    (replacement,) = started(actions)
    assert replacement not in wids
    assert g.worker.worker_id not in s.workers
    assert s.leases == {}
    assert s.available == {"CPU": 1.0}


def test_worker_death_lets_a_waiting_request_through() -> None:
    s = make(cpus=1)
    pool(s, 2)
    g = grant_of(s.request(req(1, dedicated=True)))
    assert s.request(req(2, dedicated=True)) == []
    actions = s.worker_died(g.worker.worker_id)
    assert grant_of(actions).request.rid == 2
    assert len(started(actions)) == 1, "the pool is topped up to min_workers"


def test_death_above_min_workers_is_not_replaced() -> None:
    s = make(cpus=2)
    wids = pool(s, 2)
    s.min_workers = 1
    assert s.worker_died(wids[0]) == []
    assert set(s.workers) == {wids[1]}


def test_death_of_a_starting_worker_restarts_for_a_waiting_request() -> None:
    s = make()
    (wid,) = started(s.request(req(1)))
    (again,) = started(s.worker_died(wid))
    assert again != wid
    assert grant_of(register_all(s, [again])).request.rid == 1


def test_death_of_unknown_worker_is_ignored() -> None:
    s = make(min_workers=1)
    assert s.worker_died(b"nobody") == []


def test_death_of_a_killed_worker_only_tops_up_the_pool() -> None:
    s = make(cpus=2)
    (wid,) = pool(s, 1)
    g = grant_of(s.request(req(1)))
    assert s.lease_returned(g.lease.lease_id, now=0.0, kill=True) == [KillWorker(wid)]
    assert len(started(s.worker_died(wid))) == 1
    assert s.available == {"CPU": 2.0}


# ---------------------------------------------------------------- client gone
def test_client_gone_drops_its_requests_and_kills_its_leased_workers() -> None:
    s = make(cpus=1)
    pool(s, 3)
    mine = grant_of(s.request(req(1, client="a", dedicated=True)))
    s.request(req(2, client="a"))
    s.request(req(3, client="b"))
    assert [r.rid for r in s.queue] == [2, 3]

    actions = s.client_gone("a")
    assert of(actions, KillWorker) == [KillWorker(mine.worker.worker_id)]
    assert s.workers[mine.worker.worker_id].state is WorkerState.DEAD
    assert grant_of(actions).request.rid == 3, "the freed CPU goes to the other client, not the dropped request"
    assert all(lz.client == "b" for lz in s.leases.values())
    assert not s.queue


def test_client_gone_for_unknown_client_changes_nothing() -> None:
    s = make()
    pool(s, 1)
    g = grant_of(s.request(req(1, client="a")))
    assert s.client_gone("zzz") == []
    assert s.leases == {g.lease.lease_id: g.lease}


def test_client_gone_with_a_blocked_lease_keeps_accounts_straight() -> None:
    s = make(cpus=1)
    (wid,) = pool(s, 1)
    grant_of(s.request(req(1, client="a")))
    s.blocked(wid)
    s.client_gone("a")
    assert s.available == {"CPU": 1.0}


# ---------------------------------------------------------------- idle reaping
def test_reap_idle_kills_only_extra_workers_idle_past_the_timeout() -> None:
    s = make(cpus=3, timeout_s=30.0)
    wids = pool(s, 3, now=0.0)
    s.min_workers = 1
    returned = grant_of(s.request(req(1)))
    kept = grant_of(s.request(req(2)))
    (never_leased,) = set(wids) - {returned.worker.worker_id, kept.worker.worker_id}
    s.lease_returned(returned.lease.lease_id, now=50.0)

    assert s.reap_idle(now=30.0) == [], "idle for exactly the timeout is not too long"
    assert s.reap_idle(now=40.0) == [KillWorker(never_leased)], "idle time counts from the return"
    assert s.workers[never_leased].state is WorkerState.DEAD
    assert s.reap_idle(now=79.0) == []
    assert s.reap_idle(now=81.0) == [KillWorker(returned.worker.worker_id)]
    assert s.reap_idle(now=1e9) == [], "the leased worker is never reaped"
    assert s.workers[kept.worker.worker_id].state is WorkerState.LEASED


def test_reap_idle_keeps_min_workers() -> None:
    s = make(timeout_s=1.0)
    pool(s, 2, now=0.0)
    assert s.reap_idle(now=1e9) == []


def test_reap_idle_stops_at_min_workers() -> None:
    s = make(timeout_s=1.0)
    wids = pool(s, 4, now=0.0)
    s.min_workers = 2
    killed = s.reap_idle(now=100.0)
    assert len(killed) == 2 and all(k.worker_id in wids for k in killed)
    assert s.reap_idle(now=200.0) == []


def test_reap_idle_spares_workers_that_own_objects() -> None:
    s = make(timeout_s=1.0)
    wids = pool(s, 3, now=0.0)
    s.min_workers = 1
    s.workers[wids[0]].owns_objects = True  # refs to its objects live elsewhere: they die with it
    killed = s.reap_idle(now=100.0)
    assert sorted(k.worker_id for k in killed) == sorted(wids[1:])
    s.workers[wids[0]].owns_objects = False
    assert s.reap_idle(now=200.0) == []  # (now it is the minimum)


# ---------------------------------------------------------------- no over-starting
def test_five_requests_on_two_cpus_start_exactly_two_workers() -> None:
    s = make(cpus=2)
    actions: list[Any] = []
    for rid in range(5):
        actions += s.request(req(rid))
    wids = started(actions)
    assert len(wids) == 2
    assert of(actions, Grant) == [] and of(actions, Reclaim) == []

    grants = of(register_all(s, wids), Grant)
    assert [g.request.rid for g in grants] == [0, 1]
    assert [r.rid for r in s.queue] == [2, 3, 4]

    nxt = s.lease_returned(grants[0].lease.lease_id, now=1.0)
    assert started(nxt) == [] and grant_of(nxt).request.rid == 2
    assert len(s.workers) == 2


def test_zero_cpu_requests_each_get_a_worker() -> None:
    s = make(cpus=1)
    actions: list[Any] = []
    for rid in range(3):
        actions += s.request(req(rid, cpu=0.0))
    assert len(started(actions)) == 3


# ---------------------------------------------------------------- reclaim
def test_reclaim_when_blocked_by_non_dedicated_leases() -> None:
    s = make(cpus=1)
    pool(s, 2)
    grant_of(s.request(req(1)))
    assert s.request(req(2, client="c2")) == [Reclaim()]


def test_no_reclaim_when_only_dedicated_leases_hold_resources() -> None:
    s = make(cpus=1)
    pool(s, 2)
    grant_of(s.request(req(1, dedicated=True)))
    assert s.request(req(2)) == []


def test_no_reclaim_when_waiting_only_for_a_worker_to_start() -> None:
    s = make(cpus=2)
    pool(s, 1)
    grant_of(s.request(req(1)))
    actions = s.request(req(2))
    assert len(started(actions)) == 1 and of(actions, Reclaim) == []


# ---------------------------------------------------------------- random event sequences
class SchedulerMachine(RuleBasedStateMachine):
    """Drive the scheduler the way a node service would and check its books after every step."""

    starting = Bundle("starting")

    def __init__(self) -> None:
        super().__init__()
        self.s = make(cpus=2, min_workers=1, timeout_s=5.0, GPU=1.0)
        self.now = 0.0
        self.rids = itertools.count(1)
        self.granted: set[tuple[Any, int]] = set()
        self.pending: list[bytes] = []
        self.apply(self.s.prestart())

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, StartWorker):
                self.pending.append(a.worker_id)
            elif isinstance(a, Grant):
                key = (a.request.client, a.request.rid)
                assert key not in self.granted, f"{key} granted twice"
                self.granted.add(key)
                assert a.worker.state is WorkerState.LEASED
            elif isinstance(a, Reject):
                pytest.fail(f"feasible request rejected: {a}")

    def _leased(self) -> list[bytes]:
        return [w for w, r in self.s.workers.items() if r.state is WorkerState.LEASED]

    @rule(
        cpu=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        gpu=st.sampled_from([0.0, 0.0, 1.0]),
        client=st.sampled_from(["a", "b"]),
        dedicated=st.booleans(),
    )
    def request(self, cpu: float, gpu: float, client: str, dedicated: bool) -> None:
        r = LeaseRequest(client, next(self.rids), {"CPU": cpu, "GPU": gpu}, dedicated)
        self.apply(self.s.request(r))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        wid = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        if wid in self.s.workers and self.s.workers[wid].state is WorkerState.STARTING:
            self.apply(self.s.worker_registered(wid, 1, "addr", self.now))

    @precondition(lambda self: self.s.leases)
    @rule(data=st.data(), kill=st.booleans())
    def return_lease(self, data: st.DataObject, kill: bool) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.s.leases)))
        self.apply(self.s.lease_returned(lease_id, self.now, kill=kill))

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.s.workers)))
        self.apply(self.s.worker_died(wid))

    @precondition(lambda self: any(r.state is WorkerState.LEASED for r in self.s.workers.values()))
    @rule(data=st.data())
    def block(self, data: st.DataObject) -> None:
        self.apply(self.s.blocked(data.draw(st.sampled_from(sorted(self._leased())))))

    @precondition(lambda self: any(r.state is WorkerState.LEASED for r in self.s.workers.values()))
    @rule(data=st.data())
    def unblock(self, data: st.DataObject) -> None:
        self.apply(self.s.unblocked(data.draw(st.sampled_from(sorted(self._leased())))))

    @rule(client=st.sampled_from(["a", "b"]))
    def client_gone(self, client: str) -> None:
        self.apply(self.s.client_gone(client))

    @rule(dt=st.sampled_from([1.0, 10.0]))
    def reap(self, dt: float) -> None:
        self.now += dt
        self.apply(self.s.reap_idle(self.now))

    @invariant()
    def books_balance(self) -> None:
        s = self.s
        for k, total in s.total.items():
            held = sum(lz.resources.get(k, 0.0) for lz in s.leases.values() if not (k == "CPU" and lz.blocked))
            assert s.available[k] == pytest.approx(total - held), (k, s.available, s.leases)

    @invariant()
    def leases_match_workers(self) -> None:
        s = self.s
        for lid, lz in s.leases.items():
            rec = s.workers.get(lz.worker_id)
            assert rec is not None and rec.state is WorkerState.LEASED and rec.lease_id == lid
        assert len({lz.worker_id for lz in s.leases.values()}) == len(s.leases)
        leased = [w for w in s.workers.values() if w.state is WorkerState.LEASED]
        assert len(leased) == len(s.leases)

    @invariant()
    def pool_not_below_minimum(self) -> None:
        alive = [w for w in self.s.workers.values() if w.state is not WorkerState.DEAD]
        dead = [w for w in self.s.workers.values() if w.state is WorkerState.DEAD]
        # Killed workers are replaced when their death is reported, not when they are killed.
        assert len(alive) + len(dead) >= self.s.min_workers

    @invariant()
    def no_queued_request_fits_while_a_worker_idles(self) -> None:
        s = self.s
        if any(w.state is WorkerState.IDLE for w in s.workers.values()):
            for r in s.queue:
                assert not _fits(r.resources, s.available), f"{r} waits although a worker is idle"

    @invariant()
    def a_fitting_queued_request_has_a_worker_on_the_way(self) -> None:
        s = self.s
        starting = sum(1 for w in s.workers.values() if w.state is WorkerState.STARTING)
        if any(_fits(r.resources, s.available) for r in s.queue):
            assert starting > 0, "a request that fits waits for nothing"

    @invariant()
    def queued_requests_were_not_granted(self) -> None:
        for r in self.s.queue:
            assert (r.client, r.rid) not in self.granted


SchedulerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
