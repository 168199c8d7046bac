"""Asking a node for a worker, following a full node's redirects (spillback).

The one place where a lease request is sent and redirects are followed, for the task
submitter and the head's actor manager alike; where to ask first, and whether a node
redirects, is decided in ``_placement.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asyncray._placement import MAX_REDIRECTS
from asyncray._wire import messages as m
from asyncray._wire.connection import Connection


async def request_lease(
    node: Connection, resources: dict[str, float], label: str, *,
    connect_to: Callable[[str], Awaitable[Connection]], redirected_label: str, dedicated: bool = False,
) -> tuple[Connection, m.LeaseGrant | m.LeaseRedirect]:
    """Ask ``node`` for a worker; follow at most MAX_REDIRECTS redirects to other nodes.

    Returns the node that answered last and its answer: a grant, or (after too many hops)
    a redirect still. Raises what the connection raises (ConnectionLost, RemoteCallError for
    a request no node can ever serve, ProtocolError for a malformed answer).
    """
    reply = await node.request(m.RequestLease(rid=0, resources=resources, dedicated=dedicated, label=label))
    for _ in range(MAX_REDIRECTS):
        if not isinstance(reply, m.LeaseRedirect):
            break
        node = await connect_to(reply.redirect)
        reply = await node.request(
            m.RequestLease(rid=0, resources=resources, dedicated=dedicated, label=redirected_label)
        )
    return node, reply
