"""Head fault tolerance with real processes: SIGKILL the head of a CLI cluster, start it again
on the same storage (SQLite by default, or a real Redis server), and the cluster goes on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import is_running, wait_for
from test_cluster import PRELUDE, Cluster, free_port, interactive_driver, new_cluster, parse_result

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real redis-server of this test's own, on a free port (killed by pid at the end)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client package is not installed (pip install 'asyncray[redis]')")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            return False

        assert wait_for(up, timeout=10), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


DRIVER = PRELUDE + """
import threading
asyncray.init(address="auto")

@asyncray.remote
class Keeper:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n
    def pid(self):
        return os.getpid()

@asyncray.remote
def long_task(flag):
    while not os.path.exists(flag):
        time.sleep(0.05)
    return "long done"

@asyncray.remote
def square(x):
    return x * x

keeper = Keeper.options(name="keeper", namespace="ft", lifetime="detached", resources={"b": 0.1}).remote()
assert asyncray.get(keeper.incr.remote(), timeout=30) == 1
long_ref = long_task.remote(sys.argv[1])
print("READY " + json.dumps({"actor_pid": asyncray.get(keeper.pid.remote(), timeout=30)}), flush=True)
sys.stdin.readline()  # the head is dead

found = {}
def find_by_name():  # needs the head: waits for it to come back
    t0 = time.monotonic()
    try:
        h = asyncray.get_actor("keeper", namespace="ft")
        found["count"] = asyncray.get(h.incr.remote(), timeout=60)
    except Exception as exc:
        found["error"] = f"{type(exc).__name__}: {exc}"
    found["at"] = time.monotonic()
finder = threading.Thread(target=find_by_name)
finder.start()

stream = [asyncray.get(square.remote(i), timeout=30) for i in range(40)]  # the head is down all along
during = {"stream_ok": stream == [i * i for i in range(40)], "calls": asyncray.get(keeper.incr.remote(), timeout=30)}
print("STREAM " + json.dumps(during), flush=True)
sys.stdin.readline()  # the head is back
back_at = time.monotonic()
stream += [asyncray.get(square.remote(i), timeout=30) for i in range(40, 60)]
finder.join(90)
later = Keeper.options(name="later", namespace="ft").remote()  # placing a new actor needs the head
result(
    stream_ok=stream == [i * i for i in range(60)],
    long=asyncray.get(long_ref, timeout=60),
    found=found.get("count"), found_error=found.get("error"),
    found_after=round(found.get("at", back_at) - back_at, 2),
    later=asyncray.get(later.incr.remote(), timeout=60),
    actor_pid=asyncray.get(keeper.pid.remote(), timeout=30),
)
"""


def _kill_head(c: Cluster) -> int:
    (pid,) = c.daemon_pids("head")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not is_running(pid), 10)
    return pid


def _run_outage(c: Cluster, restart_args: list[str]) -> dict[str, object]:
    """The driver of DRIVER through a head SIGKILL and restart; its result, with timings."""
    flag = os.path.join(c.tmpdir, "release-long-task")
    workers_before = {p.pid for p in c.processes() if "asyncray._worker" in " ".join(p.cmdline())}
    drv, line = interactive_driver(c, DRIVER, flag)
    try:
        assert drv.stdout is not None and drv.stdin is not None
        actor_pid = json.loads(line[6:])["actor_pid"]
        c.track()
        killed = _kill_head(c)
        assert all(psutil.pid_exists(p) for p in workers_before), "killing the head killed workers"
        drv.stdin.write("killed\n")
        drv.stdin.flush()
        during = drv.stdout.readline()
        assert during.startswith("STREAM "), during + drv.communicate(timeout=30)[1]
        stream = json.loads(during[7:])
        t0 = time.monotonic()
        out = c.cli("start", "--head", *restart_args).stdout
        restart_s = time.monotonic() - t0
        assert "Restarted the asyncray head" in out and "restored" in out, out
        assert killed not in c.daemon_pids("head")
        drv.stdin.write("back\n")
        drv.stdin.flush()
        with open(flag, "w"):
            pass
        out, err = drv.communicate(timeout=120)
        res = parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + during + out, err))
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
    return {**res, **stream, "first_pid": actor_pid, "restart_s": restart_s}


def _check(c: Cluster, res: dict[str, object]) -> None:
    assert res["stream_ok"] is True, res  # tasks ran while the head was down, and after
    assert res["calls"] == 2, res  # the actor answered its owner during the outage
    assert res["long"] == "long done", res  # the task running across the outage delivered
    assert res["found_error"] is None and res["found"] == 3, res  # found by name, state kept
    assert res["actor_pid"] == res["first_pid"], res  # the same process: never restarted
    assert res["later"] == 1, res  # new actors are placed again
    assert res["found_after"] < 15, res
    nodes = c.nodes()
    assert len(nodes) == 2 and all(n["state"] == "ALIVE" for n in nodes), c.status()


def test_head_restart_keeps_the_cluster_sqlite() -> None:
    """The default storage (SQLite in the session directory): same address, same token."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "2")  # one for the long task, one for the stream
        token = c.token()
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        assert len(c.daemon_pids("head-node")) == 1  # the head machine's node runs beside the head
        storage = c.info()["storage"]
        assert storage.startswith("sqlite:///") and storage.endswith("head.db")
        cluster_id = c.info()["cluster_id"]
        res = _run_outage(c, [])
        _check(c, res)
        assert c.token() == token and c.info()["cluster_id"] == cluster_id  # the same cluster
        print("recovery:", json.dumps({k: res[k] for k in ("restart_s", "found_after")}), file=sys.stderr)


def test_head_restart_on_another_port_with_redis(redis_url: str) -> None:
    """A Redis storage: the new head listens on another port; nodes find it through Redis,
    the driver through this machine's cluster file."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "2", "--storage", redis_url)
        first_address = c.address
        c.cli("start", "--address", redis_url, "--num-cpus", "1", "--resources", '{"b": 1}')
        new_port = free_port()
        res = _run_outage(c, ["--port", str(new_port), "--storage", redis_url])
        assert c.info()["address"].endswith(f":{new_port}") and c.info()["address"] != first_address
        _check(c, res)
        c.stop()
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            assert client.keys("asyncray:*") == [], "'asyncray stop' left the cluster's state in Redis"
        finally:
            client.close()


DRIVER_OWNER = PRELUDE + """
asyncray.init(address="auto")

@asyncray.remote
class Solo:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n
    def pid(self):
        return os.getpid()

solo = Solo.remote()  # not detached: it lives as long as this driver
assert asyncray.get(solo.incr.remote(), timeout=30) == 1
print("READY " + json.dumps({"pid": asyncray.get(solo.pid.remote(), timeout=30)}), flush=True)
sys.stdin.readline()  # the head went away and came back, and the other owner is gone for good
result(count=asyncray.get(solo.incr.remote(), timeout=30))
"""


def test_after_a_restart_actors_of_owners_that_never_return_end() -> None:
    """Two drivers own one (non-detached) actor each; the head dies; one driver dies too. The
    restarted head waits for owners to reconnect: the live driver's actor goes on, the dead
    one's is ended, as its owner's exit would have ended it."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "2")
        stays, line_stays = interactive_driver(c, DRIVER_OWNER)
        leaves, line_leaves = interactive_driver(c, DRIVER_OWNER)
        try:
            assert stays.stdin is not None
            orphan_pid = json.loads(line_leaves[6:])["pid"]
            kept_pid = json.loads(line_stays[6:])["pid"]
            c.track()
            _kill_head(c)
            leaves.kill()
            leaves.communicate(timeout=30)
            c.cli("start", "--head", env={"ASYNCRAY_OWNER_RETURN_S": "3"})
            assert wait_for(lambda: not is_running(orphan_pid), timeout=20)
            assert is_running(kept_pid)
            stays.stdin.write("go\n")
            stays.stdin.flush()
            out, err = stays.communicate(timeout=60)
            res = parse_result(subprocess.CompletedProcess(stays.args, stays.returncode, line_stays + out, err))
        finally:
            for drv in (stays, leaves):
                if drv.poll() is None:
                    drv.kill()
                    drv.communicate(timeout=30)
        assert res["count"] == 2, res  # the same actor, its state kept


def test_a_stalled_head_takes_its_nodes_back() -> None:
    """The head is frozen longer than the nodes wait for it (they drop it and keep trying);
    when it wakes, the nodes rejoin and none is fenced: a stall is not their death."""
    fast = {"ASYNCRAY_HEAD_TIMEOUT_S": "2"}
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", env=fast)
        c.cli("start", "--address", c.address, "--num-cpus", "1", "--resources", '{"b": 1}', env=fast)
        nodes_before = set(c.daemon_pids("node")) | set(c.daemon_pids("head-node"))
        (head,) = c.daemon_pids("head")
        c.track()
        os.kill(head, signal.SIGSTOP)
        try:
            time.sleep(6)  # the nodes took the head for gone after 2 s and are trying to rejoin
        finally:
            os.kill(head, signal.SIGCONT)

        def all_back() -> bool:
            nodes = c.nodes()
            return len(nodes) == 2 and all(n["state"] == "ALIVE" for n in nodes)

        assert wait_for(all_back, timeout=20, interval=0.5), c.status()
        assert all(is_running(p) for p in nodes_before)  # no node was fenced
        res = c.driver("""
            asyncray.init(address="auto")
            result(value=asyncray.get(asyncray.remote(resources={"b": 1})(lambda: 5).remote(), timeout=30))
        """)
        assert res["value"] == 5


def test_a_storage_outage_fails_what_needs_it_clearly_and_the_head_stays_up(redis_url: str) -> None:
    """The Redis server dies under a running head: creating an actor (which must be recorded
    first) fails at once, saying the storage could not take it; tasks still run; the head
    serves on (status works) instead of crashing or hanging."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", "--storage", redis_url)
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        (server,) = [
            p for p in psutil.process_iter(["cmdline"])
            if "redis-server" in " ".join(p.info["cmdline"] or []) and port in " ".join(p.info["cmdline"] or [])
        ]
        server.kill()
        server.wait(10)
        res = c.driver("""
            asyncray.init(address="auto")

            @asyncray.remote
            class A:
                def f(self):
                    return 1

            @asyncray.remote
            def g():
                return 2

            t0 = time.monotonic()
            try:
                asyncray.get(A.remote().f.remote(), timeout=60)
                actor = {"error": None}
            except Exception as exc:
                actor = {"error": type(exc).__name__, "message": str(exc)[:400], "elapsed": time.monotonic() - t0}
            result(actor=actor, task=asyncray.get(g.remote(), timeout=30))
        """)
        actor = res["actor"]
        assert actor["error"] == "ActorDiedError" and "could not record the actor" in actor["message"], actor
        assert actor["elapsed"] < 20, actor
        assert res["task"] == 2
        assert len(c.nodes()) == 1 and is_running(c.daemon_pids("head")[0])
