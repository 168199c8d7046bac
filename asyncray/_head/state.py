"""What the head remembers for people to look at: tasks, a timeline, counts and latencies.

Owners report once a second (``TaskEvents``); this keeps the latest picture per owner and
a bounded history of finished tasks, and for a worker hosting an actor its mailbox depth and
event-loop lag. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_FINISHED = 20_000
# Prometheus histogram bucket bounds for task latency, in seconds.
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)

TASK_FIELDS = ("task_id", "name", "state", "worker_pid", "node_id", "submitted_at", "started_at", "job_id")
FINISHED_FIELDS = (*TASK_FIELDS, "ended_at", "error")


@dataclass
class OwnerReport:
    """The last report of one owner process (driver or worker)."""

    owner: bytes
    pid: int
    role: str
    counts: dict[str, dict[str, int]]
    live: list[dict[str, Any]]
    objects: list[int]
    at: float
    actor: dict[str, Any] | None = None  # {actor_id, mailbox, loop_lag_ms} of the actor it hosts
    stored: list[Any] | None = None  # [object_id, size, refs, borrowers] of what it owns in shared memory


@dataclass
class TaskTable:
    """Live tasks per owner, finished tasks, totals and a latency histogram."""

    owners: dict[bytes, OwnerReport] = field(default_factory=dict)
    finished: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_FINISHED))
    totals: dict[str, int] = field(default_factory=lambda: {"FINISHED": 0, "FAILED": 0})
    by_name: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum: float = 0.0

    def report(self, owner: bytes, pid: int, role: str, counts: dict[str, dict[str, int]],
               live: list[list[Any]], finished: list[list[Any]], objects: list[int],
               actor: dict[str, Any] | None = None, stored: list[Any] | None = None) -> None:
        """Take one owner's report (``actor``: the stats of the actor it hosts, if any)."""
        self.owners[owner] = OwnerReport(
            owner, pid, role, counts, [dict(zip(TASK_FIELDS, row, strict=False)) for row in live], objects, time.time(),
            actor, stored,
        )
        for row in finished:
            rec = dict(zip(FINISHED_FIELDS, row, strict=False))
            rec["owner_pid"] = pid
            self.finished.append(rec)
            state = rec["state"]
            self.totals[state] = self.totals.get(state, 0) + 1
            per = self.by_name.setdefault(rec["name"], {})
            per[state] = per.get(state, 0) + 1
            latency = max(0.0, rec["ended_at"] - rec["submitted_at"])
            self.latency_sum += latency
            self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += 1

    def forget(self, owner: bytes) -> None:
        """An owner went away; its live tasks went with it."""
        self.owners.pop(owner, None)

    def counts(self) -> dict[str, int]:
        """Tasks by state: live ones from the reports, finished ones from the totals."""
        out = dict(self.totals)
        for rep in self.owners.values():
            for by_state in rep.counts.values():
                for state, n in by_state.items():
                    out[state] = out.get(state, 0) + n
        return out

    def summary(self) -> dict[str, dict[str, int]]:
        """Tasks by function name and state."""
        out = {name: dict(states) for name, states in self.by_name.items()}
        for rep in self.owners.values():
            for name, by_state in rep.counts.items():
                per = out.setdefault(name, {})
                for state, n in by_state.items():
                    per[state] = per.get(state, 0) + n
        return out

    def tasks(self, limit: int) -> list[dict[str, Any]]:
        """Live tasks first, then the most recent finished ones."""
        live = [t for rep in self.owners.values() for t in rep.live]
        recent = list(self.finished)[-max(0, limit - len(live)):] if limit > len(live) else []
        return (live + recent[::-1])[:limit]

    def actor_stats(self) -> dict[bytes, dict[str, Any]]:
        """Mailbox depth and loop lag by actor id, from the reports of the workers hosting them."""
        return {rep.actor["actor_id"]: {**rep.actor, "pid": rep.pid} for rep in self.owners.values() if rep.actor}

    def running_by_pid(self) -> dict[int, str]:
        """Which function each worker pid runs now."""
        return {t["worker_pid"]: t["name"] for rep in self.owners.values() for t in rep.live if t["state"] == "RUNNING"}
