"""GPU ids and ``accelerator_type`` (issue 15, item 5).

First the pure part: the local scheduler hands whole GPUs out as distinct ids, packs
fractions onto one id, and frees them with the lease (no processes). Then real workers: a
runtime with ``num_gpus=2`` sets CUDA_VISIBLE_DEVICES per lease, ``get_gpu_ids()`` and the
runtime context agree, and ``accelerator_type`` maps to the node's custom resource.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncray
from asyncray._node.scheduler import (
    Grant,
    LeaseRequest,
    LocalScheduler,
    Reject,
    StartWorker,
    node_gpu_ids,
    pick_gpus,
)

# ---------------------------------------------------------------- the scheduler, without processes


def make(gpus: float = 2.0, cpus: float = 8.0, gpu_ids: list[str] | None = None) -> LocalScheduler:
    counter = itertools.count(1)
    return LocalScheduler(
        total={"CPU": cpus, "GPU": gpus}, min_workers=0, new_worker_id=lambda: f"w{next(counter)}".encode(),
        gpu_ids=gpu_ids,
    )


def ask(s: LocalScheduler, rid: int, gpu: float, cpu: float = 0.0, client: Any = "c") -> list[Any]:
    """Request a lease and play the service: started workers register at once."""
    resources = {"GPU": gpu, **({"CPU": cpu} if cpu else {})}
    actions = s.request(LeaseRequest(client, rid, resources))
    for _ in range(10):
        started = [a.worker_id for a in actions if isinstance(a, StartWorker)]
        if not started:
            break
        for wid in started:
            actions += s.worker_registered(wid, 1, f"addr-{wid.decode()}", 0.0)
        actions = [a for a in actions if not (isinstance(a, StartWorker) and a.worker_id in started)]
    return actions


def grants(actions: list[Any]) -> dict[int, Grant]:
    return {a.request.rid: a for a in actions if isinstance(a, Grant)}


def test_node_gpu_ids_follow_cuda_visible_devices() -> None:
    assert node_gpu_ids(2, None) == ["0", "1"]
    assert node_gpu_ids(0, None) == []
    assert node_gpu_ids(2, "3,5,7") == ["3", "5"]  # the node's own CUDA_VISIBLE_DEVICES, first N
    assert node_gpu_ids(1.5, None) == ["0", "1"]  # half a GPU is still a device
    assert node_gpu_ids(2, "") == ["0", "1"]
    assert node_gpu_ids(3, "1") == ["1", "0", "2"]  # more than it names: the lowest unnamed numbers


def test_pick_gpus_whole_and_packed_fractions() -> None:
    order = ["0", "1"]
    assert pick_gpus(0, {"0": 1.0, "1": 1.0}, order) == []
    assert pick_gpus(2, {"0": 1.0, "1": 1.0}, order) == [("0", 1.0), ("1", 1.0)]
    assert pick_gpus(1, {"0": 0.5, "1": 1.0}, order) == [("1", 1.0)]  # a whole GPU, never a shared one
    assert pick_gpus(1, {"0": 0.5, "1": 0.5}, order) is None  # 1.0 free in all, but on no one GPU
    assert pick_gpus(0.5, {"0": 1.0, "1": 0.5}, order) == [("1", 0.5)]  # packed onto the fuller GPU
    assert pick_gpus(1.5, {"0": 1.0, "1": 0.5}, order) == [("0", 1.0), ("1", 0.5)]


def test_whole_gpus_get_distinct_ids_and_are_freed_with_the_lease() -> None:
    s = make()
    g = grants(ask(s, 1, 1) + ask(s, 2, 1))
    assert sorted(g[1].lease.gpu_ids + g[2].lease.gpu_ids) == ["0", "1"]
    assert not grants(ask(s, 3, 1))  # both GPUs are held: it waits
    freed = g[1].lease.gpu_ids
    later = grants(s.lease_returned(g[1].lease.lease_id, 1.0))
    assert later[3].lease.gpu_ids == freed


def test_fractions_share_an_id_and_leave_the_other_gpu_whole() -> None:
    s = make()
    g = grants(ask(s, 1, 0.5) + ask(s, 2, 0.5))
    assert g[1].lease.gpu_ids == g[2].lease.gpu_ids == ["0"]
    whole = grants(ask(s, 3, 1))
    assert whole[3].lease.gpu_ids == ["1"]


def test_a_fragmented_node_waits_for_a_whole_gpu() -> None:
    s = make()
    g = grants(ask(s, 1, 0.5) + ask(s, 2, 0.5) + ask(s, 3, 0.5))
    assert [g[r].lease.gpu_ids for r in (1, 2, 3)] == [["0"], ["0"], ["1"]]
    s.lease_returned(g[1].lease.lease_id, 1.0)  # 0.5 free on each GPU: 1.0 in all, no whole one
    assert s.available["GPU"] == pytest.approx(1.0)
    assert not grants(ask(s, 4, 1))
    late = grants(s.lease_returned(g[2].lease.lease_id, 1.0))
    assert late[4].lease.gpu_ids == ["0"]


def test_ids_come_back_when_the_worker_dies_or_the_client_goes() -> None:
    s = make()
    g = grants(ask(s, 1, 1, client="a") + ask(s, 2, 1, client="b"))
    s.worker_died(g[1].worker.worker_id)
    s.client_gone("b")
    assert s.gpu_free == {"0": 1.0, "1": 1.0}
    assert s.available["GPU"] == pytest.approx(2.0)


def test_a_blocked_task_keeps_its_gpu() -> None:
    s = make()
    g = grants(ask(s, 1, 1, cpu=1))
    s.blocked(g[1].worker.worker_id)  # lends its CPU, not its GPU
    assert s.gpu_free[g[1].lease.gpu_ids[0]] == 0.0


def test_ids_from_the_nodes_environment() -> None:
    s = make(gpu_ids=node_gpu_ids(2, "6,7"))
    g = grants(ask(s, 1, 1) + ask(s, 2, 1))
    assert sorted(g[1].lease.gpu_ids + g[2].lease.gpu_ids) == ["6", "7"]


def test_an_unknown_accelerator_type_is_rejected_by_name() -> None:
    s = make()
    actions = s.request(LeaseRequest("c", 1, {"CPU": 1.0, "accelerator_type:H100": 0.001}))
    (reject,) = [a for a in actions if isinstance(a, Reject)]
    assert "accelerator_type='H100'" in reject.reason


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.25, 0.5, 1.0, 2.0]), st.integers(0, 20)), max_size=30))
def test_gpu_shares_never_overbook_an_id(ops: list[tuple[bool, float, int]]) -> None:
    """Whatever the order of requests and returns: no id is held beyond one GPU, and what is
    free per id plus what leases hold adds up to one GPU per id."""
    s = make(gpus=3)
    rid = 0
    for is_request, amount, pick in ops:
        if is_request or not s.leases:
            rid += 1
            ask(s, rid, amount)
        else:
            lease_id = sorted(s.leases)[pick % len(s.leases)]
            s.lease_returned(lease_id, 0.0)
        held = dict.fromkeys(s.gpu_free, 0.0)
        for lease in s.leases.values():
            assert sum(share for _, share in lease.gpus) == pytest.approx(lease.resources.get("GPU", 0.0))
            for gid, share in lease.gpus:
                held[gid] += share
        for gid, free in s.gpu_free.items():
            assert held[gid] <= 1.0 + 1e-9
            assert free + held[gid] == pytest.approx(1.0)


# ---------------------------------------------------------------- real workers


@pytest.fixture(scope="module")
def gpu_ray() -> Iterator[Any]:
    """2 CPUs, 2 GPUs (ids 0 and 1: the node's CUDA_VISIBLE_DEVICES is cleared) and an A100."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    saved = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    asyncray.init(num_cpus=2, num_gpus=2, resources={"accelerator_type:A100": 1}, include_dashboard=False)
    yield asyncray
    asyncray.shutdown()
    if saved is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _rendezvous(where: str, me: str, count: int) -> None:
    """Wait (in a task) until ``count`` tasks have arrived: they run at the same time."""
    Path(where, me).touch()
    deadline = time.monotonic() + 20
    while len(os.listdir(where)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {os.listdir(where)} arrived")
        time.sleep(0.01)


@asyncray.remote(num_gpus=1)
def one_gpu(where: str, me: str) -> tuple[str | None, list[Any]]:
    _rendezvous(where, me, 2)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), asyncray.get_gpu_ids()


@asyncray.remote(num_gpus=0.5)
def half_gpu(where: str, me: str) -> tuple[str | None, list[Any]]:
    _rendezvous(where, me, 2)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), asyncray.get_gpu_ids()


@asyncray.remote
def no_gpu() -> tuple[str | None, list[Any], dict[str, list[str]]]:
    ctx = asyncray.get_runtime_context()
    return os.environ.get("CUDA_VISIBLE_DEVICES"), asyncray.get_gpu_ids(), ctx.get_accelerator_ids()


@asyncray.remote(num_gpus=1)
def gpu_context() -> tuple[str | None, list[Any], dict[str, list[str]]]:
    ctx = asyncray.get_runtime_context()
    return os.environ.get("CUDA_VISIBLE_DEVICES"), asyncray.get_gpu_ids(), ctx.get_accelerator_ids()


@asyncray.remote(num_gpus=1)
class GpuHolder:
    def seen(self) -> tuple[str | None, list[Any]]:
        return os.environ.get("CUDA_VISIBLE_DEVICES"), asyncray.get_gpu_ids()


@asyncray.remote(accelerator_type="A100")
def on_a100() -> str:
    return "ran"


def test_whole_gpu_tasks_at_once_see_different_devices(gpu_ray: Any, tmp_path: Path) -> None:
    a, b = asyncray.get([one_gpu.remote(str(tmp_path), "a"), one_gpu.remote(str(tmp_path), "b")], timeout=60)
    assert {a[0], b[0]} == {"0", "1"}
    assert sorted(a[1] + b[1]) == [0, 1]  # ints, as Ray's get_gpu_ids
    assert [str(i) for i in a[1]] == [a[0]]


def test_half_gpu_tasks_share_one_device(gpu_ray: Any, tmp_path: Path) -> None:
    a, b = asyncray.get([half_gpu.remote(str(tmp_path), "a"), half_gpu.remote(str(tmp_path), "b")], timeout=60)
    assert a == b
    assert a[0] in ("0", "1") and a[1] == [int(a[0])]


def test_no_gpu_request_sees_no_device(gpu_ray: Any, tmp_path: Path) -> None:
    # Workers are reused across leases: one that ran a GPU task must not keep its device.
    asyncray.get([gpu_context.remote() for _ in range(4)], timeout=60)
    for visible, ids, accel in asyncray.get([no_gpu.remote() for _ in range(6)], timeout=60):
        assert visible == ""  # as Ray: empty, so the task stays off GPUs others hold
        assert ids == [] and accel == {"GPU": []}


def test_mixed_requests_each_see_their_own_lease(gpu_ray: Any) -> None:
    """Leases of different shapes churn through the same workers: every task sees its own."""
    for _ in range(3):
        refs = [
            (want, (gpu_context if want else no_gpu).options(num_gpus=want).remote())
            for want in [1, 0, 0.5, 0, 1, 0.5, 0] * 3
        ]
        for want, ref in refs:
            visible, ids, accel = asyncray.get(ref, timeout=60)
            if want:
                assert len(ids) == 1 and visible == str(ids[0]) and accel == {"GPU": [visible]}
            else:
                assert (visible, ids, accel) == ("", [], {"GPU": []})


def test_runtime_context_accelerator_ids(gpu_ray: Any) -> None:
    visible, ids, accel = asyncray.get(gpu_context.remote(), timeout=60)
    assert accel == {"GPU": [visible]} and ids == [int(visible)]  # str ids in the context, as Ray's
    assert asyncray.get_gpu_ids() == []  # the driver holds no lease


def test_an_actor_keeps_its_gpu_for_life(gpu_ray: Any) -> None:
    holder = GpuHolder.remote()
    first = asyncray.get(holder.seen.remote(), timeout=60)
    assert first[0] in ("0", "1") and first[1] == [int(first[0])]
    # Meanwhile tasks take and give back the other GPU: the actor's stays its own.
    others = asyncray.get([gpu_context.remote() for _ in range(3)], timeout=60)
    assert {o[0] for o in others} == {"1" if first[0] == "0" else "0"}
    assert asyncray.get([holder.seen.remote() for _ in range(3)], timeout=60) == [first] * 3
    asyncray.kill(holder)


def test_accelerator_type_runs_on_a_node_that_offers_it(gpu_ray: Any) -> None:
    assert asyncray.get(on_a100.remote(), timeout=60) == "ran"
    assert asyncray.get(on_a100.options(accelerator_type="A100", num_gpus=1).remote(), timeout=60) == "ran"


def test_accelerator_type_nobody_has_fails_by_name(gpu_ray: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCRAY_UNSCHEDULABLE_TIMEOUT_S", "0.3")
    with pytest.raises(asyncray.TaskUnschedulableError, match="H100"):
        asyncray.get(on_a100.options(accelerator_type="H100").remote(), timeout=60)


def test_an_actor_asking_for_a_missing_accelerator_type_dies_saying_so(gpu_ray: Any) -> None:
    actor = GpuHolder.options(accelerator_type="H100").remote()
    with pytest.raises(asyncray.ActorDiedError, match="accelerator_type='H100'"):
        asyncray.get(actor.seen.remote(), timeout=60)


def test_accelerator_type_is_checked_at_the_call_site() -> None:
    with pytest.raises(TypeError, match="accelerator_type must be a str"):
        asyncray.remote(accelerator_type=100)(lambda: None)
    with pytest.raises(ValueError, match="accelerator_type must not be empty"):
        on_a100.options(accelerator_type="")
    with pytest.raises(TypeError, match="accelerator_type must be a str"):
        GpuHolder.options(accelerator_type=["A100"])


def test_node_ids_from_its_cuda_visible_devices_are_str(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As Ray: a node started under CUDA_VISIBLE_DEVICES=5,7 hands out 5 and 7, and
    get_gpu_ids() gives them as str (they may be UUIDs)."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    asyncray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        a, b = asyncray.get([one_gpu.remote(str(tmp_path), "a"), one_gpu.remote(str(tmp_path), "b")], timeout=60)
        assert {a[0], b[0]} == {"5", "7"}
        assert sorted(a[1] + b[1]) == ["5", "7"]
    finally:
        asyncray.shutdown()


def test_noset_env_leaves_cuda_visible_devices_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the ids are still assigned, the variable is not touched."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")
    asyncray.init(num_cpus=1, num_gpus=1, include_dashboard=False)
    try:
        visible, ids, _ = asyncray.get(gpu_context.remote(), timeout=60)
        assert visible is None and ids == [0]
    finally:
        asyncray.shutdown()
