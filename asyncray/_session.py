"""Where a cluster started on this machine keeps its address, token and process ids.

``asyncray start --head`` writes them; ``init("auto")``, ``asyncray status`` and
``asyncray stop`` read them (SPEC 6). The token file is 0600: only its owner can connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

SESSIONS_DIR = os.path.join(tempfile.gettempdir(), "asyncray-sessions")
CLUSTER_FILE = os.path.join(SESSIONS_DIR, "cluster.json")
TOKEN_FILE = os.path.join(SESSIONS_DIR, "cluster_token")


def new_token() -> str:
    """A fresh cluster token."""
    # Hex, not urlsafe base64: a token that starts with "-" reads as an option on a command
    # line (`asyncray start --token -x...` failed now and then).
    return secrets.token_hex(32)


def write_token(token: str) -> str:
    """Store the token readable by this user only; returns the file's path."""
    os.makedirs(SESSIONS_DIR, exist_ok=True)
    fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.chmod(TOKEN_FILE, 0o600)
    return TOKEN_FILE


def resolve_token(explicit: str | None = None) -> str:
    """The token to use: explicit, then ASYNCRAY_TOKEN, then this machine's token file."""
    if explicit:
        return explicit
    env = os.environ.get("ASYNCRAY_TOKEN")
    if env:
        return env
    try:
        with open(TOKEN_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def read_cluster() -> dict[str, Any] | None:
    """What ``start`` recorded on this machine, or None."""
    try:
        with open(CLUSTER_FILE) as f:
            info: dict[str, Any] | None = json.load(f)
            return info
    except (OSError, ValueError):
        return None


def write_cluster(info: dict[str, Any]) -> None:
    """Record (replace) this machine's cluster info."""
    os.makedirs(SESSIONS_DIR, exist_ok=True)
    tmp = f"{CLUSTER_FILE}.{os.getpid()}.tmp"  # concurrent writers must not share one
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, CLUSTER_FILE)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold this machine's session lock (a flock on the sessions directory itself)."""
    os.makedirs(SESSIONS_DIR, exist_ok=True)
    fd = os.open(SESSIONS_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_cluster(change: Callable[[dict[str, Any]], None]) -> None:
    """Read, change and write the cluster info as one step (two ``start`` at once lose nothing)."""
    with _locked():
        info = read_cluster() or {}
        change(info)
        write_cluster(info)


def add_process(pid: int, role: str, extra: dict[str, Any] | None = None) -> None:
    """Remember a process ``start`` launched, for ``stop``."""
    entry = {"pid": pid, "role": role, **(extra or {})}
    update_cluster(lambda info: info.setdefault("processes", []).append(entry))


def resolve_address(address: str) -> str:
    """``auto`` -> the head started on this machine; anything else as given."""
    if address != "auto":
        return address
    info = read_cluster()
    if not info or not info.get("address"):
        raise ConnectionError(
            "init(address='auto') found no cluster started on this machine; run 'asyncray start --head' first"
        )
    return str(info["address"])
