"""An actor's mailbox: envelopes queued per caller and delivered in each caller's order.

A caller numbers its calls to one actor at ``.remote()`` time and sends them in that order
(``_actor/client.py``); numbers it skips (a call cancelled, or failed upstream, before it
left) never arrive. On the actor's side a call may still not be ready to run when it
arrives: its arguments may live on another node and must be copied here first. The
mailbox holds such a call, and every later call of the same caller behind it, until it is
ready, so a sync actor runs each caller's calls in the order that caller made them
(SPEC 3). Calls of different callers do not wait for each other.

Pure bookkeeping: no I/O, no loop; the host feeds it events and runs what comes out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from asyncray._wire import messages as m


@dataclass(slots=True, eq=False)
class Envelope:
    """One method call: the message, where its reply goes, and its place in its caller's order."""

    msg: m.PushTask
    reply_to: Any  # the connection to the caller (a ``Connection``; anything with ``send`` in tests)
    ready: bool = True  # False while its arguments are being copied to this node
    delivered: bool = field(default=False, init=False)

    @property
    def caller(self) -> bytes:
        """Who made the call (its worker or driver id)."""
        return self.msg.caller

    @property
    def seq(self) -> int:
        """The caller's number for this call."""
        return self.msg.seq


class Mailbox:
    """Per-caller queues of envelopes, in sequence order; a call leaves once it and all
    earlier calls of its caller are ready."""

    def __init__(self) -> None:
        self._queues: dict[bytes, deque[Envelope]] = {}
        self._running = 0  # delivered and not finished yet

    def __len__(self) -> int:
        """Calls received and not finished: waiting plus running (the dashboard's mailbox depth)."""
        return self._running + sum(len(q) for q in self._queues.values())

    def put(self, envelope: Envelope) -> list[Envelope]:
        """A call arrived; returns the calls that may run now, in order."""
        q = self._queues.get(envelope.caller)
        if q is None:
            q = self._queues[envelope.caller] = deque()
        if not q or q[-1].seq <= envelope.seq:
            q.append(envelope)
        else:  # arrived out of order (it should not, on one connection): still run in seq order
            i = len(q)
            while i > 0 and q[i - 1].seq > envelope.seq:
                i -= 1
            q.insert(i, envelope)
        return self._release(envelope.caller)

    def made_ready(self, envelope: Envelope) -> list[Envelope]:
        """Its arguments are here now; returns the calls that may run now, in order."""
        envelope.ready = True
        return self._release(envelope.caller)

    def drop(self, envelope: Envelope) -> list[Envelope]:
        """A waiting call will not run (its arguments could not be fetched); returns what may run now."""
        q = self._queues.get(envelope.caller)
        if q is not None and envelope in q:
            q.remove(envelope)
        return self._release(envelope.caller)

    def drain(self) -> list[Envelope]:
        """The actor exits: every call received and not delivered, taken out (they will not run)."""
        out = [envelope for q in self._queues.values() for envelope in q]
        self._queues.clear()
        return out

    def finished(self) -> None:
        """A delivered call finished (its reply went out)."""
        self._running -= 1

    def _release(self, caller: bytes) -> list[Envelope]:
        q = self._queues.get(caller)
        out: list[Envelope] = []
        while q and q[0].ready:
            envelope = q.popleft()
            envelope.delivered = True
            out.append(envelope)
        if q is not None and not q:
            del self._queues[caller]
        self._running += len(out)
        return out
