"""What a process tells the head about itself, about once a second: its tasks and objects.

The head keeps the latest report per process for the dashboard and the state API
(``asyncray list``); a worker also tells its node whether it owns objects (a worker whose
objects others may still need is not reaped while idle).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from asyncray._client.links import CoreLinks
from asyncray._client.objects import ObjectTable
from asyncray._client.submit import TaskSubmitter
from asyncray._wire import messages as m

REPORT_INTERVAL_S = 1.0
MAX_LIVE_IN_REPORT = 1000
MAX_STORED_IN_REPORT = 1000
# A worker hosting an actor reports at least this often (mailbox depth, loop lag), even idle.
ACTOR_REPORT_INTERVAL_S = 2.0


class TaskReporter:
    """Builds and sends this process's reports; quiet while nothing changes."""

    def __init__(
        self, links: CoreLinks, objects: ObjectTable, tasks: TaskSubmitter,
        actor_stats: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.links = links
        self.objects = objects
        self.tasks = tasks
        self._actor_stats = actor_stats  # the hosted actor's mailbox and loop lag, if any

    async def run(self) -> None:
        """Report about once a second (the core supervises this loop)."""
        links, objects, tasks = self.links, self.objects, self.tasks
        quiet = True
        last_sent, last_mailbox, last_objects = 0.0, -1, 0
        owned = False
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if links.role == "worker":
                owns = objects.owns_any()
                if owns != owned and links.send_node(m.WorkerOwns(owns=owns)):
                    owned = owns  # the node must not reap a worker whose objects others may use
            actor = self._actor_stats()
            n_objects = len(objects)
            if quiet and not tasks.has_news() and n_objects == last_objects:
                if actor is None:
                    continue  # nothing new since an empty report
                if actor["mailbox"] == last_mailbox and time.monotonic() - last_sent < ACTOR_REPORT_INTERVAL_S:
                    continue  # an actor's worker: report changes at once, else every 2 s
            quiet = not tasks.has_news()
            report = self.report(actor)
            if links.send_head(report):
                last_objects = n_objects
                last_sent, last_mailbox = time.monotonic(), actor["mailbox"] if actor is not None else -1

    def report(self, actor: dict[str, Any] | None = None) -> m.TaskEvents:
        """One report: live and finished tasks, object counts, stored objects, the hosted actor."""
        counts, live = self.tasks.live_rows(MAX_LIVE_IN_REPORT)
        return m.TaskEvents(
            owner=self.links.worker_id, pid=os.getpid(), role=self.links.role, counts=counts, live=live,
            finished=self.tasks.take_finished(), objects=[len(self.objects), 0], actor=actor,
            stored=self.objects.stored_report(MAX_STORED_IN_REPORT),
        )
