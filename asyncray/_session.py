"""Where a cluster started on this machine keeps its address, token and process ids.

``asyncray start --head`` writes them; ``init("auto")``, ``asyncray status`` and
``asyncray stop`` read them (SPEC 6). They live in a directory of this user's own
(``<tmp>/asyncray-<uid>``, mode 0700) that is checked on every use: another local user
who could create or write it would otherwise choose the head a driver connects to and
whose replies it unpickles, and the pids ``stop`` kills.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

SESSIONS_DIR = os.path.join(tempfile.gettempdir(), f"asyncray-{os.getuid()}")
CLUSTER_FILE = os.path.join(SESSIONS_DIR, "cluster.json")
TOKEN_FILE = os.path.join(SESSIONS_DIR, "cluster_token")


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _open_checked_dir(path: str) -> int:
    """An fd of ``path`` once it is shown to be a real directory of ours that nobody else can write.

    Raises:
        PermissionError: a symlink, not a directory, another user's, or writable by others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermissionError(
                f"asyncray: {path} is a symlink or not a directory; asyncray keeps its cluster files only in a real "
                f"directory of your own. Remove it (rm {path}) and try again."
            ) from None
        raise
    try:
        st = os.fstat(fd)  # of what was opened: a rename after the check cannot swap it
        if st.st_uid != os.getuid():
            raise PermissionError(
                f"asyncray: {path} belongs to {_owner(st.st_uid)}, not to you ({_owner(os.getuid())}); another user "
                "may have made it to take over your clusters. Have it removed (by root or its owner) and try again."
            )
        if st.st_mode & 0o022:
            raise PermissionError(
                f"asyncray: {path} is writable by other users (mode {oct(stat.S_IMODE(st.st_mode))}), who could have "
                f"planted a cluster file there. Remove it (rm -r {path}) or check its contents and chmod 700 it."
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # ours and writable by us only (e.g. made by a plain makedirs): just close it
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_sessions_dir() -> str:
    """Create this user's sessions directory (0700) if missing, check it, and return its path.

    Raises:
        PermissionError: it is a symlink, another user's, or writable by other users.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(SESSIONS_DIR, 0o700)
    os.close(_open_checked_dir(SESSIONS_DIR))
    return SESSIONS_DIR


def is_own_dir(path: str) -> bool:
    """True when ``path`` is a directory (not a symlink) owned by this user: one we may delete."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def read_private_file(path: str) -> str | None:
    """The text of ``path``, or None if there is none.

    Raises:
        PermissionError: a symlink, not a regular file, another user's, or writable by others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # NONBLOCK: a fifo must not hang us
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(
                f"asyncray: {path} is a symlink; asyncray trusts only a file it wrote itself. Remove it and try again."
            ) from None
        raise
    with open(fd, encoding="utf-8") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise PermissionError(
                f"asyncray: {path} is not a regular file of yours that only you can write (owner "
                f"{_owner(st.st_uid)}, mode {oct(stat.S_IMODE(st.st_mode))}); asyncray will not trust it. "
                "Remove it and try again."
            )
        return f.read()


def write_private_file(path: str, data: str, tmp: str | None = None) -> None:
    """Replace ``path`` atomically with a new 0600 file holding ``data``.

    The content goes to ``tmp`` (default: a name of this process's own), created anew
    (O_EXCL, O_NOFOLLOW: never an existing file or a symlink's target), then renamed over
    ``path``, so a reader sees the old file or the whole new one.
    """
    tmp = tmp or f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # left by a writer that died; its directory is ours, so is the name
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def new_token() -> str:
    """A fresh cluster token."""
    # Hex, not urlsafe base64: a token that starts with "-" reads as an option on a command
    # line (`asyncray start --token -x...` failed now and then).
    return secrets.token_hex(32)


def write_token(token: str) -> str:
    """Store the token readable by this user only; returns the file's path."""
    ensure_sessions_dir()
    write_private_file(TOKEN_FILE, token)
    return TOKEN_FILE


def resolve_token(explicit: str | None = None) -> str:
    """The token to use: explicit, then ASYNCRAY_TOKEN, then this machine's token file."""
    if explicit:
        return explicit
    env = os.environ.get("ASYNCRAY_TOKEN")
    if env:
        return env
    ensure_sessions_dir()
    return (read_private_file(TOKEN_FILE) or "").strip()


def read_cluster() -> dict[str, Any] | None:
    """What ``start`` recorded on this machine, or None.

    Raises:
        PermissionError: the sessions directory or the file is not this user's alone.
    """
    ensure_sessions_dir()
    text = read_private_file(CLUSTER_FILE)
    try:
        info = json.loads(text) if text else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def write_cluster(info: dict[str, Any]) -> None:
    """Record (replace) this machine's cluster info."""
    ensure_sessions_dir()
    write_private_file(CLUSTER_FILE, json.dumps(info, indent=2))  # a temp name per process: writers may race


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold this machine's session lock (a flock on the sessions directory itself)."""
    ensure_sessions_dir()
    fd = _open_checked_dir(SESSIONS_DIR)
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
