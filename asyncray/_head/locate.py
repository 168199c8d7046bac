"""Finding the head again: where a process that lost it should reconnect.

A head restarted on the same machine may come back on the same address (its storage keeps
it), on another port, or on another machine with the same Redis. A process that was pointed
at ``auto`` (this machine's ``cluster.json``) or at the storage itself (``redis://...``) looks
the address up again each time it reconnects, as Ray's raylets find their GCS through Redis.
"""

from __future__ import annotations

STORAGE_SCHEMES = ("redis://", "rediss://", "sqlite://")


def is_lookup(spec: str) -> bool:
    """True when ``spec`` names where to find the head's address rather than the address."""
    return spec == "auto" or spec.startswith(STORAGE_SCHEMES)


async def locate_head(spec: str) -> str:
    """The head's current address for ``spec`` (``auto``, a storage URL, or an address as is)."""
    if spec == "auto":
        from asyncray._session import resolve_address

        return resolve_address("auto")
    if spec.startswith(STORAGE_SCHEMES):
        from asyncray._head.storage import open_storage

        storage = await open_storage(spec)
        try:
            meta = await storage.load("meta")
        except Exception as exc:  # a backend's own error types (redis) say "unreachable" here
            raise ConnectionError(f"cannot read the head's address from {spec}: {exc}") from exc
        finally:
            await storage.close()
        address = meta.get("address", b"").decode()
        if not address:
            raise ConnectionError(f"no head has recorded its address in {spec} yet")
        return address
    return spec
