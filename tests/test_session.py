"""Cluster tokens are safe to pass on a command line; the session files are this user's alone.

The sessions directory (``<tmp>/asyncray-<uid>``) decides which head ``init("auto")`` connects
to and which pids ``asyncray stop`` kills, so anything another local user could have made or
changed there is refused, and the sweep of dead sessions never deletes what is not ours.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncray import _daemon, _session
from asyncray._client import runtime

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="making a file of another user needs root (os.chown)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _env(tmpdir: Path) -> dict[str, str]:
    """A child's environment whose sessions directory is under ``tmpdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCRAY_")}
    return {**env, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the session files at ``tmp_path/asyncray-<uid>`` (not made yet)."""
    d = tmp_path / f"asyncray-{os.getuid()}"
    monkeypatch.setattr(_session, "SESSIONS_DIR", str(d))
    monkeypatch.setattr(_session, "CLUSTER_FILE", str(d / "cluster.json"))
    monkeypatch.setattr(_session, "TOKEN_FILE", str(d / "cluster_token"))
    monkeypatch.delenv("ASYNCRAY_TOKEN", raising=False)
    yield d


def test_a_new_token_never_reads_as_a_command_line_option() -> None:
    # `asyncray start --address ... --token <token>`: a token starting with "-" made argparse
    # take it for an option (seen as a rare failure of the network-namespace test).
    tokens = {_session.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert not [t for t in tokens if t.startswith("-")]
    assert all(len(t) >= 64 for t in tokens)


def test_the_sessions_directory_is_per_user() -> None:
    assert os.path.basename(_session.SESSIONS_DIR) == f"asyncray-{os.getuid()}"
    assert os.path.dirname(_session.CLUSTER_FILE) == os.path.dirname(_session.TOKEN_FILE) == _session.SESSIONS_DIR


def test_files_round_trip_in_a_private_directory(sessions: Path) -> None:
    _session.write_token("abc123")
    _session.write_cluster({"address": "127.0.0.1:1", "processes": [{"pid": 1, "role": "head"}]})
    _session.add_process(2, "node")
    assert _mode(sessions) == 0o700
    assert _mode(sessions / "cluster_token") == _mode(sessions / "cluster.json") == 0o600
    assert _session.resolve_token() == "abc123"
    assert _session.resolve_address("auto") == "127.0.0.1:1"
    assert [p["pid"] for p in _session.read_cluster()["processes"]] == [1, 2]  # type: ignore[index]
    assert sorted(os.listdir(sessions)) == ["cluster.json", "cluster_token"]  # no temp file left


def test_a_directory_of_ours_readable_by_others_is_closed(sessions: Path) -> None:
    sessions.mkdir(mode=0o755)
    os.chmod(sessions, 0o755)  # as a plain makedirs (umask 022) leaves it: nobody else could write in it
    assert _session.read_cluster() is None
    assert _mode(sessions) == 0o700


def test_a_world_writable_sessions_directory_is_refused(sessions: Path) -> None:
    sessions.mkdir()
    os.chmod(sessions, 0o777)
    for call in (_session.read_cluster, lambda: _session.write_token("t"), _session.resolve_token):
        with pytest.raises(PermissionError, match="writable by other users") as err:
            call()
        assert str(sessions) in str(err.value) and "chmod 700" in str(err.value)
    assert os.listdir(sessions) == []


def test_init_auto_refuses_a_world_writable_sessions_directory(tmp_path: Path) -> None:
    # A real driver, as a victim would run it: it must not connect anywhere, and must say why.
    d = tmp_path / f"asyncray-{os.getuid()}"
    d.mkdir()
    os.chmod(d, 0o777)
    (d / "cluster.json").write_text(json.dumps({"address": "127.0.0.1:9", "processes": []}))
    proc = subprocess.run(
        [sys.executable, "-c", "import asyncray; asyncray.init('auto')"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "PermissionError" in proc.stderr and str(d) in proc.stderr and "writable by other users" in proc.stderr


def test_a_symlinked_sessions_directory_is_refused(sessions: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "cluster.json").write_text(json.dumps({"address": "10.9.9.9:1"}))
    sessions.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symlink") as err:
        _session.resolve_address("auto")
    assert str(sessions) in str(err.value)
    with pytest.raises(PermissionError, match="symlink"):
        _session.write_cluster({"address": "x"})
    assert json.loads((elsewhere / "cluster.json").read_text()) == {"address": "10.9.9.9:1"}


@as_root
def test_a_sessions_directory_of_another_user_is_refused(sessions: Path) -> None:
    sessions.mkdir(mode=0o700)
    os.chown(sessions, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"belongs to uid {NOBODY}") as err:
        _session.read_cluster()
    assert str(sessions) in str(err.value) and "removed" in str(err.value)
    with pytest.raises(PermissionError, match="belongs to"):
        _session.write_token("t")
    assert os.listdir(sessions) == []


def test_a_symlinked_cluster_file_is_refused_and_never_written_through(sessions: Path, tmp_path: Path) -> None:
    target = tmp_path / "planted.json"
    target.write_text(json.dumps({"address": "10.9.9.9:1", "processes": [{"pid": 1, "role": "head"}]}))
    sessions.mkdir(mode=0o700)
    (sessions / "cluster.json").symlink_to(target)
    (sessions / "cluster_token").symlink_to(target)
    with pytest.raises(PermissionError, match="symlink"):
        _session.read_cluster()
    with pytest.raises(PermissionError, match="symlink"):
        _session.resolve_token()
    _session.write_cluster({"address": "127.0.0.1:2"})  # replaces the link itself
    assert not os.path.islink(sessions / "cluster.json") and _session.read_cluster() == {"address": "127.0.0.1:2"}
    assert "10.9.9.9" in target.read_text()


@as_root
def test_a_cluster_file_of_another_user_is_refused(sessions: Path) -> None:
    _session.write_cluster({"address": "127.0.0.1:2"})
    _session.write_token("t")
    os.chown(sessions / "cluster.json", NOBODY, NOBODY)
    os.chown(sessions / "cluster_token", NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"uid {NOBODY}"):
        _session.read_cluster()
    with pytest.raises(PermissionError, match=f"uid {NOBODY}"):
        _session.resolve_token()


def test_a_planted_temp_name_is_not_written_through(sessions: Path, tmp_path: Path) -> None:
    sessions.mkdir(mode=0o700)
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    os.symlink(target, f"{_session.CLUSTER_FILE}.{os.getpid()}.tmp")
    _session.write_cluster({"address": "127.0.0.1:3"})
    assert target.read_text() == "keep"
    assert _session.read_cluster() == {"address": "127.0.0.1:3"}
    assert sorted(os.listdir(sessions)) == ["cluster.json"]


def test_the_daemon_ready_file_is_created_anew(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    ready = tmp_path / "head-1.ready"
    os.symlink(target, f"{ready}.tmp")
    _daemon._write_ready(str(ready), {"pid": 1})
    assert target.read_text() == "keep"
    assert _session.read_private_file(str(ready)) == '{"pid": 1}' and _mode(ready) == 0o600


@as_root
def test_the_sweep_deletes_only_dead_sessions_of_ours(
    sessions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(runtime, "_default_store_root", lambda: str(shm))
    dead = _dead_pid()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    sessions.mkdir(mode=0o700)
    ours = [sessions / f"s{dead}-aaaaaa", shm / f"asyncray-s{dead}-aaaaaa"]
    theirs = [sessions / f"s{dead}-bbbbbb", shm / f"asyncray-s{dead}-bbbbbb"]
    links = [sessions / f"s{dead}-cccccc", shm / f"asyncray-s{dead}-cccccc"]
    for d in ours + theirs:
        d.mkdir()
        (d / "f").write_text("x")
    for d in theirs:
        os.chown(d, NOBODY, NOBODY)
    for link in links:
        link.symlink_to(keep)
    runtime._sweep_stale_sessions()
    assert not any(d.exists() for d in ours)
    assert all((d / "f").exists() for d in theirs)
    assert all(link.is_symlink() for link in links) and (keep / "precious").exists()


def test_stop_kills_nothing_listed_in_a_file_it_cannot_trust(tmp_path: Path) -> None:
    # `asyncray stop` kills the pids cluster.json lists: one planted through a symlink is refused.
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        planted = tmp_path / "planted.json"
        planted.write_text(json.dumps({"address": "127.0.0.1:9", "processes": [{"pid": victim.pid, "role": "head"}]}))
        d = tmp_path / f"asyncray-{os.getuid()}"
        d.mkdir(mode=0o700)
        (d / "cluster.json").symlink_to(planted)
        proc = subprocess.run(
            [sys.executable, "-m", "asyncray.cli", "stop"], env=_env(tmp_path), capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert proc.returncode != 0 and "symlink" in proc.stdout + proc.stderr
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
