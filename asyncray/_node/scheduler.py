"""Pure local scheduler: resource accounting and worker leases, no I/O (STYLE section 3).

Events go in (a lease is requested, a worker registered, a lease came back, a worker
died, a task blocked in ``get``); actions come out (grant, reject, start or kill a worker,
ask clients to give back idle leases). The node service carries the actions out.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asyncray._placement import ACCELERATOR_PREFIX, EPS, fits


class WorkerState(enum.Enum):
    """Life of a pooled worker process."""

    STARTING = "starting"
    IDLE = "idle"
    LEASED = "leased"
    DEAD = "dead"


@dataclass(slots=True)
class WorkerRecord:
    """What the scheduler knows of one worker process."""

    worker_id: bytes
    pid: int = 0
    address: str = ""
    state: WorkerState = WorkerState.STARTING
    lease_id: int = 0
    idle_since: float = 0.0
    owns_objects: bool = False  # its objects would die with it: never reaped while true


@dataclass(slots=True)
class LeaseRequest:
    """A client's ask for a worker; ``client`` is any hashable the service uses."""

    client: Any
    rid: int
    resources: dict[str, float]
    dedicated: bool = False
    label: str = ""


@dataclass(slots=True)
class Lease:
    """A worker lent to a client with resources held for it."""

    lease_id: int
    worker_id: bytes
    client: Any
    resources: dict[str, float]
    dedicated: bool
    label: str = ""
    blocked: bool = False
    gpus: list[tuple[str, float]] = field(default_factory=list)  # (GPU id, share of it) held

    @property
    def gpu_ids(self) -> list[str]:
        """The GPU ids the lease's worker may use (CUDA_VISIBLE_DEVICES)."""
        return [gid for gid, _ in self.gpus]


@dataclass(slots=True)
class Grant:
    """Tell the client it has the worker."""

    request: LeaseRequest
    lease: Lease
    worker: WorkerRecord


@dataclass(slots=True)
class Reject:
    """Tell the client its request can never be met here."""

    request: LeaseRequest
    reason: str


@dataclass(slots=True)
class StartWorker:
    """Spawn one more worker process (the id is pre-assigned)."""

    worker_id: bytes


@dataclass(slots=True)
class KillWorker:
    """End a worker process."""

    worker_id: bytes


@dataclass(slots=True)
class Reclaim:
    """Ask lease holders to return leases they keep idle."""


Action = Grant | Reject | StartWorker | KillWorker | Reclaim

# The client of a lease whose holder (a head that died) may come back for it.
ORPHANED = "orphaned"


def node_gpu_ids(num_gpus: float, visible: str | None) -> list[str]:
    """A node's GPU ids: as Ray, the first ``num_gpus`` of its own CUDA_VISIBLE_DEVICES when
    set (``visible``), else ``0 .. num_gpus - 1``. A fractional count rounds up (1.5 GPUs: two
    ids), as a half GPU is still a device. More GPUs than ``visible`` names get the lowest
    numbers not named there (Ray refuses to start instead)."""
    count = math.ceil(num_gpus - EPS) if num_gpus > EPS else 0
    named = [v.strip() for v in (visible or "").split(",") if v.strip()]
    extra = (str(i) for i in itertools.count() if str(i) not in named)
    ids = named[:count]
    while len(ids) < count:
        ids.append(next(extra))
    return ids


def pick_gpus(amount: float, free: Mapping[str, float], order: Sequence[str]) -> list[tuple[str, float]] | None:
    """Which GPUs a request for ``amount`` of them takes, with the share of each; None: not now.

    The whole part takes whole, wholly free GPUs (lowest ids first); a fraction is packed onto
    the fullest GPU it still fits, as Ray packs fractional requests, so that 0.5 + 0.5 share
    one id and leave the other GPU whole for a ``num_gpus=1`` request.
    """
    if amount <= EPS:
        return []
    whole = int(amount + EPS)
    frac = amount - whole if amount - whole > EPS else 0.0
    empty = [g for g in order if free.get(g, 0.0) >= 1.0 - EPS]
    if len(empty) < whole:
        return None
    taken = [(g, 1.0) for g in empty[:whole]]
    if frac:
        used = {g for g, _ in taken}
        able = [g for g in order if g not in used and free.get(g, 0.0) + EPS >= frac]
        if not able:
            return None
        taken.append((min(able, key=lambda g: free[g]), frac))  # the first of the fullest
    return taken


@dataclass
class LocalScheduler:
    """Resource accounting and the worker pool's bookkeeping for one node."""

    total: dict[str, float]
    min_workers: int
    new_worker_id: Any  # () -> bytes
    idle_worker_timeout_s: float = 30.0
    available: dict[str, float] = field(init=False)
    workers: dict[bytes, WorkerRecord] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    queue: deque[LeaseRequest] = field(default_factory=deque)
    gpu_ids: list[str] | None = None  # None: 0 .. GPU-1 (see node_gpu_ids)
    gpu_free: dict[str, float] = field(init=False)  # GPU id -> the share of it not leased
    _lease_ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.available = dict(self.total)
        if self.gpu_ids is None:
            self.gpu_ids = node_gpu_ids(self.total.get("GPU", 0.0), None)
        self.gpu_free = dict.fromkeys(self.gpu_ids, 1.0)

    # ------------------------------------------------------------ events
    def prestart(self) -> list[Action]:
        """Start the pool's initial workers."""
        return [self._start() for _ in range(self.min_workers)]

    def request(self, req: LeaseRequest) -> list[Action]:
        """A client wants a worker."""
        for k, v in req.resources.items():
            if not math.isfinite(v):
                return [Reject(req, f"resource {k!r} must be a finite number, got {v}")]
            if v < 0:
                return [Reject(req, f"resource {k!r} must not be negative, got {v}")]
            if v > self.total.get(k, 0.0) + EPS:
                have = self.total.get(k, 0.0)
                if k.startswith(ACCELERATOR_PREFIX) and not have:
                    return [Reject(req, f"asks for accelerator_type={k[len(ACCELERATOR_PREFIX):]!r} but no node has"
                                        f" that accelerator (no node offers the resource {k!r})")]
                return [Reject(req, f"asks for {k}={v:g} but no node has more than {have:g}")]
        self.queue.append(req)
        return self._schedule()

    def cancel(self, client: Any, rid: int) -> list[Action]:
        """A client withdrew a request it had not been granted yet."""
        self.queue = deque(r for r in self.queue if not (r.client == client and r.rid == rid))
        return []

    def worker_registered(self, worker_id: bytes, pid: int, address: str, now: float) -> list[Action]:
        """A started worker is ready for work."""
        rec = self.workers.get(worker_id)
        if rec is None or rec.state is WorkerState.DEAD:
            return [KillWorker(worker_id)]
        if rec.state is not WorkerState.STARTING:
            return []  # a repeated registration must not free a leased worker
        rec.pid, rec.address, rec.state, rec.idle_since = pid, address, WorkerState.IDLE, now
        return self._schedule()

    def lease_returned(self, lease_id: int, now: float, kill: bool = False) -> list[Action]:
        """A client gave a worker back."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        self._release(lease)
        rec = self.workers.get(lease.worker_id)
        actions: list[Action] = []
        if rec is not None and rec.state is WorkerState.LEASED:
            if kill or lease.dedicated:
                rec.state = WorkerState.DEAD
                actions.append(KillWorker(rec.worker_id))
            else:
                rec.state, rec.lease_id, rec.idle_since = WorkerState.IDLE, 0, now
        return actions + self._schedule()

    def worker_died(self, worker_id: bytes) -> list[Action]:
        """A worker process exited or its connection dropped."""
        rec = self.workers.pop(worker_id, None)
        if rec is None:
            return []
        if rec.lease_id:
            lease = self.leases.pop(rec.lease_id, None)
            if lease is not None:
                self._release(lease)
        rec.state = WorkerState.DEAD
        actions: list[Action] = []
        alive = sum(1 for w in self.workers.values() if w.state is not WorkerState.DEAD)
        if alive < self.min_workers:
            actions.append(self._start())
        return actions + self._schedule()

    def client_gone(self, client: Any) -> list[Action]:
        """A client disconnected: drop its requests; its leased workers are killed."""
        self.queue = deque(r for r in self.queue if r.client != client)
        actions: list[Action] = []
        for lease in [lz for lz in self.leases.values() if lz.client == client]:
            del self.leases[lease.lease_id]
            self._release(lease)
            rec = self.workers.get(lease.worker_id)
            if rec is not None:
                rec.state = WorkerState.DEAD
                actions.append(KillWorker(rec.worker_id))
        return actions + self._schedule()

    def orphan(self, client: Any) -> list[Action]:
        """A head disconnected: its queued requests go, its leases (actors) are kept for the
        head that takes over, which ends those it does not know (``orphaned_leases``)."""
        self.queue = deque(r for r in self.queue if r.client != client)
        for lease in self.leases.values():
            if lease.client == client:
                lease.client = ORPHANED
        return self._schedule()

    def orphaned_leases(self) -> list[int]:
        """Leases kept for a head that went away."""
        return [lz.lease_id for lz in self.leases.values() if lz.client == ORPHANED]

    def blocked(self, worker_id: bytes) -> list[Action]:
        """The worker's task waits in ``get``: lend its CPUs to others (SPEC section 3)."""
        lease = self._lease_of(worker_id)
        if lease is None or lease.blocked:
            return []
        lease.blocked = True
        cpu = lease.resources.get("CPU", 0.0)
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpu
        return self._schedule()

    def unblocked(self, worker_id: bytes) -> list[Action]:
        """The task resumed: take its CPUs back (may briefly overcommit, as Ray does)."""
        lease = self._lease_of(worker_id)
        if lease is None or not lease.blocked:
            return []
        lease.blocked = False
        self.available["CPU"] = self.available.get("CPU", 0.0) - lease.resources.get("CPU", 0.0)
        return []

    def reap_idle(self, now: float) -> list[Action]:
        """Kill workers beyond the pool's minimum that sat idle too long."""
        actions: list[Action] = []
        alive = [w for w in self.workers.values() if w.state is not WorkerState.DEAD]
        extra = len(alive) - self.min_workers
        for rec in alive:
            if extra <= 0:
                break
            idle_long = rec.state is WorkerState.IDLE and now - rec.idle_since > self.idle_worker_timeout_s
            if idle_long and not rec.owns_objects:
                rec.state = WorkerState.DEAD
                actions.append(KillWorker(rec.worker_id))
                extra -= 1
        return actions

    # ------------------------------------------------------------ internals
    def _lease_of(self, worker_id: bytes) -> Lease | None:
        rec = self.workers.get(worker_id)
        return self.leases.get(rec.lease_id) if rec is not None and rec.lease_id else None

    def _release(self, lease: Lease) -> None:
        for k, v in lease.resources.items():
            if k == "CPU" and lease.blocked:
                continue  # already lent out while blocked
            self.available[k] = self.available.get(k, 0.0) + v
        for gid, share in lease.gpus:
            self.gpu_free[gid] = min(1.0, self.gpu_free.get(gid, 0.0) + share)

    def _start(self) -> StartWorker:
        wid = self.new_worker_id()
        self.workers[wid] = WorkerRecord(worker_id=wid)
        return StartWorker(wid)

    def _schedule(self) -> list[Action]:
        actions: list[Action] = []
        if not self.queue:
            return actions
        idle = [w for w in self.workers.values() if w.state is WorkerState.IDLE]
        starting = sum(1 for w in self.workers.values() if w.state is WorkerState.STARTING)
        waiting: deque[LeaseRequest] = deque()
        blocked_by_resources = False
        # Requests waiting for a worker to start still reserve their share here, so that
        # five 1-CPU requests on a 2-CPU node start two workers, not five.
        room = dict(self.available)
        gpu_room = dict(self.gpu_free)
        assert self.gpu_ids is not None
        for req in self.queue:
            # Enough GPU in total is not enough: the shares must fit on particular GPUs.
            gpus = pick_gpus(req.resources.get("GPU", 0.0), gpu_room, self.gpu_ids) if fits(req.resources, room) else None
            if gpus is None:
                waiting.append(req)
                blocked_by_resources = True
                continue
            for k, v in req.resources.items():
                room[k] = room.get(k, 0.0) - v
            for gid, share in gpus:
                gpu_room[gid] -= share
            if not idle:
                waiting.append(req)
                if starting == 0:
                    actions.append(self._start())
                else:
                    starting -= 1
                continue
            rec = idle.pop()
            for k, v in req.resources.items():
                self.available[k] = self.available.get(k, 0.0) - v
            for gid, share in gpus:
                self.gpu_free[gid] -= share
            lease = Lease(
                next(self._lease_ids), rec.worker_id, req.client, dict(req.resources), req.dedicated, req.label, gpus=gpus,
            )
            self.leases[lease.lease_id] = lease
            rec.state, rec.lease_id = WorkerState.LEASED, lease.lease_id
            actions.append(Grant(req, lease, rec))
        self.queue = waiting
        if blocked_by_resources and any(not lz.dedicated for lz in self.leases.values()):
            actions.append(Reclaim())
        return actions
