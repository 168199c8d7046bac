"""Multi-node clusters made with the real ``asyncray`` CLI, each process on its own port and store.

Every cluster here is started with ``python -m asyncray.cli start`` in subprocesses and stopped
with ``asyncray stop``; afterwards no daemon or worker it started may be left, nor any of the
shared-memory directories its nodes used. Drivers run as subprocess scripts, so this test
process never calls ``init``.

Each cluster gets a private TMPDIR, so its ``cluster.json`` and token file (which live under
the temp directory) never meet those of another cluster, or of anyone else's on this machine.
Clusters in this module still run one at a time (the machine has two cores).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import wait_for

from asyncray._procs import pid_alive

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

RESULT = "RESULT "


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Cluster:
    """One cluster on this machine, driven through the CLI with a TMPDIR of its own."""

    def __init__(self, tmpdir: str, *, prefix: tuple[str, ...] = ()) -> None:
        self.tmpdir = tmpdir
        self.prefix = list(prefix)  # e.g. ("ip", "netns", "exec", NAME)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCRAY_")}
        self.env.update(TMPDIR=tmpdir, PYTHONUNBUFFERED="1")
        self.sessions = os.path.join(tmpdir, f"asyncray-{os.getuid()}")
        self.address = ""
        self.tracked: list[psutil.Process] = []
        self.stopped = False

    # ------------------------------------------------------------ CLI
    def cli(
        self, *args: str, check: bool = True, timeout: float = 60, prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*(self.prefix if prefix is None else prefix), sys.executable, "-m", "asyncray.cli", *args]
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})}, cwd=self.tmpdir,
        )
        if check:
            assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    def start_head(self, port: int, *extra: str, **kw: Any) -> str:
        out = self.cli("start", "--head", "--port", str(port), *extra, **kw).stdout
        found = re.search(r"head at (\S+?) ", out)
        assert found, out
        self.address = found.group(1)
        return out

    def start_node(self, *extra: str, **kw: Any) -> str:
        return self.cli("start", "--address", self.address, *extra, **kw).stdout

    def info(self) -> dict[str, Any]:
        with open(os.path.join(self.sessions, "cluster.json")) as f:
            return json.load(f)

    def token(self) -> str:
        with open(os.path.join(self.sessions, "cluster_token")) as f:
            return f.read().strip()

    def status(self) -> str:
        return self.cli("status", timeout=30).stdout

    def nodes(self) -> list[dict[str, Any]]:
        """Nodes as ``status`` prints them: id prefix, state, address, resource totals."""
        out: list[dict[str, Any]] = []
        for line in self.status().splitlines():
            head = re.match(r"\s+node (\w+)\s+(ALIVE|DEAD)\s+(\S+)", line)
            if head:
                out.append({"id": head.group(1), "state": head.group(2), "address": head.group(3), "resources": {}})
                continue
            res = re.match(r"\s+(\S+)\s+(\S+) used / (\S+) total", line)
            if res and out:
                out[-1]["resources"][res.group(1)] = res.group(3)
        return out

    # ------------------------------------------------------------ processes
    def daemon_pids(self, role: str | None = None) -> list[int]:
        """Pids of the daemons ``start`` launched: "head", "node" (nodes that joined with
        --address), "head-node" (the node beside the head), or all of them."""
        def kind(p: dict[str, Any]) -> str:
            return "head-node" if p.get("head_machine") else p["role"]

        return [p["pid"] for p in self.info()["processes"] if role is None or kind(p) == role]

    def processes(self) -> list[psutil.Process]:
        """Daemons and workers of this cluster: recorded pids, their descendants, and any
        asyncray daemon/worker that carries this cluster's TMPDIR (orphans included)."""
        found: dict[int, psutil.Process] = {}
        pids = set()
        with contextlib.suppress(OSError, ValueError):
            pids = set(self.daemon_pids())
        for p in psutil.process_iter():
            cmd = _cmdline(p)
            if "asyncray._daemon" not in cmd and "asyncray._worker" not in cmd:
                continue
            try:
                mine = p.pid in pids or any(a.pid in pids for a in p.parents())
                mine = mine or p.environ().get("TMPDIR") == self.tmpdir
            except psutil.Error:
                continue
            if mine and _alive(p):
                found[p.pid] = p
        return list(found.values())

    def track(self) -> None:
        """Remember every process of the cluster seen now (checked to be gone after stop)."""
        known = {p.pid for p in self.tracked}
        self.tracked += [p for p in self.processes() if p.pid not in known]

    def dirs(self) -> list[str]:
        out = []
        with contextlib.suppress(OSError, ValueError):
            for p in self.info()["processes"]:
                out += [p[k] for k in ("store_dir", "session_dir", "spill_dir") if p.get(k)]
        return out

    def stop(self) -> subprocess.CompletedProcess[str]:
        """``asyncray stop``; then nothing of the cluster may be left."""
        self.track()
        dirs = self.dirs()
        shm = [d for d in dirs if d.startswith("/dev/shm/")]
        assert all(re.match(r"/dev/shm/asyncray-(head|node)-", d) for d in shm), shm
        proc = self.cli("stop", check=False, timeout=60)
        self.stopped = True
        assert proc.returncode == 0, proc.stdout + proc.stderr
        left = lambda: [p for p in self.tracked + self.processes() if _alive(p)]
        assert wait_for(lambda: not left(), timeout=10), [(p.pid, _cmdline(p)) for p in left()]
        assert not [d for d in dirs if os.path.exists(d)], f"left behind: {[d for d in dirs if os.path.exists(d)]}"
        assert not os.path.exists(os.path.join(self.sessions, "cluster.json"))
        assert not os.path.exists(os.path.join(self.sessions, "cluster_token"))
        return proc

    def force_cleanup(self) -> None:
        """Last resort after a failed test: kill whatever is left, remove the stores."""
        with contextlib.suppress(Exception):
            self.cli("stop", check=False, timeout=60)
        for p in self.tracked + self.processes():
            with contextlib.suppress(psutil.Error):
                p.kill()
        for d in self.dirs() + glob.glob(os.path.join(self.sessions, "*")):
            shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------ drivers
    def driver(
        self, code: str, *, env: dict[str, str] | None = None, timeout: float = 90, prefix: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run a driver script after PRELUDE; it prints ``RESULT {json}`` (``result(...)``)."""
        cmd = [*(self.prefix if prefix is None else prefix), sys.executable, "-c", PRELUDE + textwrap.dedent(code)]
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})}, cwd=self.tmpdir,
        )
        return parse_result(proc)


def parse_result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len(RESULT):])


@contextlib.contextmanager
def new_cluster(*, prefix: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A cluster with a TMPDIR of its own; stopped and checked for leftovers at the end."""
    tmpdir = tempfile.mkdtemp(prefix="arc-")  # short: Unix socket paths live under it
    c = Cluster(tmpdir, prefix=prefix)
    ok = False
    try:
        yield c
        ok = True
    finally:
        try:
            if ok and not c.stopped and os.path.exists(os.path.join(c.sessions, "cluster.json")):
                c.stop()
        finally:
            c.force_cleanup()
            shutil.rmtree(tmpdir, ignore_errors=True)


PRELUDE = """
import hashlib, json, os, sys, time
import numpy as np
import asyncray
from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
"""


# ====================================================================== a two-node cluster
@pytest.fixture(scope="class")
def cluster() -> Iterator[Cluster]:
    """A head (2 CPUs) plus a node with 1 CPU and ``special: 1``, shared by one test class.

    A module-level function, not a method: pytest 9.2 deprecates class-scoped fixtures defined
    as instance methods (the instance they would see is not the one the tests run on).
    """
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"special": 1}')
        yield c
        c.stop()


class TestTwoNodes:
    """Tests that share the two-node ``cluster`` fixture."""

    def test_status_lists_both_nodes(self, cluster: Cluster) -> None:
        nodes = cluster.nodes()
        assert len(nodes) == 2, cluster.status()
        assert all(n["state"] == "ALIVE" for n in nodes)
        head, special = sorted(nodes, key=lambda n: "special" in n["resources"])
        assert head["resources"]["CPU"] == "2" and "special" not in head["resources"]
        assert special["resources"]["CPU"] == "1" and special["resources"]["special"] == "1"
        assert cluster.address in cluster.status()
        info = cluster.info()
        assert [p["role"] for p in info["processes"]] == ["head", "node", "node"]  # the head runs alone
        assert oct(os.stat(os.path.join(cluster.sessions, "cluster_token")).st_mode & 0o777) == "0o600"

    def test_custom_resource_big_object_and_spread(self, cluster: Cluster) -> None:
        res = cluster.driver("""
            asyncray.init(address="auto")
            nodes = {n["NodeID"]: n for n in asyncray.nodes()}
            special = [k for k, n in nodes.items() if n["Resources"].get("special")]
            head = [k for k, n in nodes.items() if not n["Resources"].get("special")]

            @asyncray.remote(resources={"special": 1})
            def where():
                return asyncray.get_runtime_context().get_node_id()

            @asyncray.remote(resources={"special": 1})
            def make():
                a = np.random.default_rng(7).random(25_000_000)
                return a

            @asyncray.remote
            def digest(a):
                return asyncray.get_runtime_context().get_node_id(), hashlib.sha256(a.tobytes()).hexdigest()

            @asyncray.remote(resources={"special": 1})
            def digest_there(a):
                return hashlib.sha256(a.tobytes()).hexdigest()

            @asyncray.remote(scheduling_strategy="SPREAD")
            def nap():
                time.sleep(0.3)
                return asyncray.get_runtime_context().get_node_id()

            ran_on = asyncray.get([where.remote() for _ in range(3)])
            ref = make.remote()
            t0 = time.perf_counter()
            there = asyncray.get(digest_there.remote(ref))
            node, remote_sum = asyncray.get(
                digest.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head[0], soft=False)).remote(ref)
            )
            local = asyncray.get(ref)
            elapsed = time.perf_counter() - t0
            spread = asyncray.get([nap.remote() for _ in range(6)])
            result(special=special, head=head, ran_on=ran_on, there=there, consumer=node, remote_sum=remote_sum,
                   local_sum=hashlib.sha256(local.tobytes()).hexdigest(), shape=list(local.shape),
                   driver_node=asyncray.get_runtime_context().get_node_id(), spread=spread, elapsed=elapsed)
        """)
        assert len(res["special"]) == 1 and len(res["head"]) == 1
        special, head = res["special"][0], res["head"][0]
        assert set(res["ran_on"]) == {special}
        assert res["consumer"] == head
        assert res["shape"] == [25_000_000]
        assert res["there"] == res["remote_sum"] == res["local_sum"]
        assert set(res["spread"]) == {special, head}, res["spread"]

    def test_freed_objects_leave_every_node(self, cluster: Cluster) -> None:
        """The owner frees an object: its copy on the node that made it and the pulled copy go too."""
        stores = [d for d in cluster.dirs() if d.startswith("/dev/shm/")]
        res = cluster.driver("""
            asyncray.init(address="auto")
            nodes = {n["NodeID"]: n for n in asyncray.nodes()}
            head = [k for k, n in nodes.items() if not n["Resources"].get("special")][0]

            @asyncray.remote(resources={"special": 1})
            def make(i):
                return np.full(2_000_000, float(i))  # 16 MB, stored on the special node

            @asyncray.remote
            def total(a):
                return float(a.sum())

            on_head = NodeAffinitySchedulingStrategy(head, soft=False)
            refs = [make.remote(i) for i in range(3)]
            sums = asyncray.get([total.options(scheduling_strategy=on_head).remote(r) for r in refs])
            names = [r.hex() for r in refs]
            stores = json.loads(os.environ["STORES"])
            copies = lambda: sum(os.path.exists(os.path.join(d, n)) for d in stores for n in names)
            before = copies()
            del refs
            deadline = time.monotonic() + 10
            while copies() and time.monotonic() < deadline:
                time.sleep(0.05)
            result(sums=sums, before=before, after=copies())
        """, env={"STORES": json.dumps(stores)})
        assert res["sums"] == [float(i * 2_000_000) for i in range(3)]
        assert res["before"] == 6, "each object should exist on its node and, pulled, on the head's node"
        assert res["after"] == 0, "copies of freed objects stayed behind"
        left = cluster.driver("""
            asyncray.init(address="auto")
            refs = [asyncray.put(np.ones(2_000_000)) for _ in range(2)]
            result(names=[r.hex() for r in refs], there=[os.path.exists(os.path.join(d, r.hex()))
                                                         for d in json.loads(os.environ["STORES"]) for r in refs])
            os._exit(0)  # gone without a goodbye, as if killed, holding its refs
        """, env={"STORES": json.dumps(stores)})
        assert sum(left["there"]) == 2
        gone = lambda: not any(os.path.exists(os.path.join(d, n)) for d in stores for n in left["names"])
        assert wait_for(gone, timeout=10), "objects of a driver that exited stayed in the store"

    def test_asyncray_address_env(self, cluster: Cluster) -> None:
        res = cluster.driver("""
            asyncray.init()

            @asyncray.remote(resources={"special": 1})
            def f(x):
                return x + 1

            result(n=len(asyncray.nodes()), value=asyncray.get(f.remote(41)))
        """, env={"ASYNCRAY_ADDRESS": cluster.address})
        assert res["n"] == 2 and res["value"] == 42

    # -------------------------------------------------------------- security
    def test_wrong_token_is_refused_quickly(self, cluster: Cluster) -> None:
        res = cluster.driver(f"""
            t0 = time.monotonic()
            try:
                asyncray.init(address="{cluster.address}", token="wrong")
            except Exception as exc:
                result(error=type(exc).__name__, message=str(exc), elapsed=time.monotonic() - t0)
            else:
                result(error=None, elapsed=time.monotonic() - t0)
        """, timeout=60)
        assert res["error"] is not None, "a wrong token was accepted"
        assert res["elapsed"] < 15
        assert re.search(r"token|did not answer", res["message"]), res["message"]
        t0 = time.monotonic()
        st = cluster.cli("status", "--token", "wrong", check=False, timeout=30)
        assert st.returncode != 0 and time.monotonic() - t0 < 15, st.stdout + st.stderr
        assert "ALIVE" not in st.stdout

    def test_unauthenticated_peers_are_bounded(self, cluster: Cluster) -> None:
        port = int(cluster.address.rpartition(":")[2])
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        big = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            big.sendall((48 << 20).to_bytes(4, "big") + b"\0" * 1024)  # a 48 MiB frame, no Hello yet
            assert closed_within(big, 5), "a 48 MiB frame from a peer without a Hello is being buffered"
            # closed after the Hello deadline (10 s from accepting it); the margin is for a loaded machine
            assert closed_within(silent, 15), "a peer that never sends a Hello is never closed"
        finally:
            silent.close()
            big.close()

    def test_actors_fill_both_nodes(self, cluster: Cluster) -> None:
        res = cluster.driver("""
            asyncray.init(address="auto")

            @asyncray.remote(num_cpus=1)
            class Where:
                def node(self):
                    return asyncray.get_runtime_context().get_node_id()

            actors = [Where.remote() for _ in range(3)]  # 2 CPUs on the head's node, 1 on the other
            out = []
            for a in actors:
                try:
                    out.append(asyncray.get(a.node.remote(), timeout=8))
                except Exception as exc:
                    out.append(type(exc).__name__)
            result(out=out)
        """)
        assert len(set(res["out"])) == 2 and all(len(v) == 32 for v in res["out"]), res["out"]

    def test_actor_node_affinity(self, cluster: Cluster) -> None:
        res = cluster.driver("""
            asyncray.init(address="auto")
            special = next(n["NodeID"] for n in asyncray.nodes() if n["Resources"].get("special"))

            @asyncray.remote(num_cpus=0)
            class Where:
                def node(self):
                    return asyncray.get_runtime_context().get_node_id()

            a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(special, soft=False)).remote()
            result(special=special, ran=asyncray.get(a.node.remote(), timeout=20))
        """)
        assert res["ran"] == res["special"]

    def test_node_with_wrong_token_cannot_join(self, cluster: Cluster) -> None:
        before = set(os.listdir(cluster.sessions))
        cmd = [sys.executable, "-m", "asyncray.cli", "start", "--address", cluster.address, "--num-cpus", "1",
               "--token", "wrong"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
                                cwd=cluster.tmpdir)
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 1, out + err
        assert "token" in out, out
        # what the failed node made is gone: its store, its session directory
        assert not glob.glob(f"/dev/shm/asyncray-node-{proc.pid}-*")
        assert set(os.listdir(cluster.sessions)) == before
        assert [n["state"] for n in cluster.nodes()] == ["ALIVE", "ALIVE"]

    def test_garbage_closes_only_that_connection(self, cluster: Cluster) -> None:
        from asyncray._wire import messages as m
        from asyncray._wire.codec import encode

        nodes = cluster.nodes()
        ports = {"head": int(cluster.address.rpartition(":")[2])}
        for n in nodes:
            ports[f"node {n['id']}"] = int(n["address"].rpartition(":")[2])
        for i, port in enumerate(worker_ports(cluster)):
            ports[f"worker {i}"] = port
        assert any(k.startswith("worker") for k in ports), "no worker listens on TCP"
        payloads = {
            "garbage": b"\x00\x00\x00\x05hello",
            "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "oversized length": b"\xff\xff\xff\xff" + b"x" * 64,
            "bad msgpack": b"\x00\x00\x00\x08" + b"\xc1" * 8,
            "request without hello": encode(m.GetClusterState(rid=1)),
            "hello with wrong token": encode(m.Hello(role="driver", token="wrong", peer_id=b""))
            + encode(m.GetClusterState(rid=1)),
        }
        for what, port in ports.items():
            for kind, payload in payloads.items():
                assert closed_without_answer(port, payload), f"{what} (port {port}) kept a connection after {kind}"
        # An authenticated peer with a well-formed frame whose field has the wrong type: that
        # connection closes, and nothing of it is kept (it used to list a node with no info,
        # and `asyncray status` then crashed for everyone).
        hello = encode(m.Hello(role="node", token=cluster.token(), peer_id=b"bogus-node"))
        bogus = {"k": "register_node", "rid": 1, "node_id": b"bogus-node", "address": "127.0.0.1:1",
                 "resources": {"CPU": 1.0}, "info": None}
        with socket.create_connection(("127.0.0.1", ports["head"]), timeout=5) as s:
            s.sendall(hello + frame_of(bogus))
            assert closed_within(s, 5), "the head kept a connection after a register_node with info: null"
        # the services still serve
        assert [n["state"] for n in cluster.nodes()] == ["ALIVE", "ALIVE"]
        assert "bogus" not in cluster.status()
        res = cluster.driver("""
            asyncray.init(address="auto")

            @asyncray.remote
            def f(x):
                return x * 2

            @asyncray.remote(resources={"special": 1})
            def g(x):
                return x * 3

            result(v=asyncray.get([f.remote(1), g.remote(2)]))
        """)
        assert res["v"] == [2, 6]


def worker_ports(cluster: Cluster) -> list[int]:
    """TCP ports the cluster's workers listen on."""
    ports = []
    for p in cluster.processes():
        if "asyncray._worker" not in _cmdline(p):
            continue
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    ports.append(c.laddr.port)
    return ports


def frame_of(body: dict[str, object]) -> bytes:
    """A frame around any msgpack map (to send what our own encoder would refuse to make)."""
    import msgpack

    payload = msgpack.packb(body, use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


def closed_without_answer(port: int, payload: bytes, host: str = "127.0.0.1") -> bool:
    """Send ``payload``; True when the peer closes the connection without sending anything."""
    with socket.create_connection((host, port), timeout=5) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return True
        s.settimeout(5)
        got = b""
        try:
            while True:
                data = s.recv(4096)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        return got == b""


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


# ====================================================================== CLI end to end
def test_status_then_stop_leaves_nothing() -> None:
    with new_cluster() as c:
        out = c.start_head(free_port(), "--num-cpus", "2")
        assert "asyncray.init(address='auto')" in out
        c.start_node("--num-cpus", "1", "--resources", '{"special": 1}')
        nodes = c.nodes()
        assert sorted((n["state"], n["resources"]["CPU"], n["resources"].get("special")) for n in nodes) == [
            ("ALIVE", "1", "1"), ("ALIVE", "2", None)
        ]
        c.track()
        assert len([p for p in c.tracked if "asyncray._worker" in _cmdline(p)]) >= 3, "workers were not prestarted"
        stores = [d for d in c.dirs() if d.startswith("/dev/shm/")]
        assert len(stores) == 2 and all(os.path.isdir(d) for d in stores)
        out = c.stop().stdout
        assert "Stopped 3" in out  # the head, the node beside it, the node that joined
        assert "nothing" in c.cli("stop").stdout  # a second stop is harmless
        st = c.cli("status", check=False)
        assert st.returncode != 0


def test_nodes_joining_at_once_are_all_recorded() -> None:
    """Two ``start --address`` at the same moment: both nodes end up in cluster.json (its
    updates are locked), both join, and ``stop`` ends every recorded daemon and its workers."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1")
        cmd = [sys.executable, "-m", "asyncray.cli", "start", "--address", c.address, "--num-cpus", "1"]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env, cwd=c.tmpdir)
            for _ in range(2)
        ]  # both launched before waiting for either
        outs: list[tuple[str, str]] = []
        try:
            for proc in procs:
                outs.append(proc.communicate(timeout=60))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for proc, (out, err) in zip(procs, outs, strict=True):
            assert proc.returncode == 0, out + err
        printed = sorted(int(m.group(1)) for out, _ in outs for m in [re.search(r"\(pid (\d+)\)", out)] if m)
        assert len(printed) == 2, outs
        info = c.info()
        assert sorted(p["role"] for p in info["processes"]) == ["head", "node", "node", "node"], info
        assert sorted(c.daemon_pids("node")) == printed, info
        recorded = c.daemon_pids()
        assert len(set(recorded)) == 4
        nodes = c.nodes()
        assert len(nodes) == 3 and all(n["state"] == "ALIVE" for n in nodes), c.status()
        workers: list[psutil.Process] = []
        for pid in recorded:
            with contextlib.suppress(psutil.Error):
                workers += psutil.Process(pid).children(recursive=True)
        c.stop()
        left = lambda: [pid for pid in recorded + [w.pid for w in workers] if pid_alive(pid)]
        assert wait_for(lambda: not left(), timeout=10), left()


def test_stop_ends_frozen_processes() -> None:
    """A daemon and workers that ignore everything (SIGSTOP) are killed by ``stop`` after its grace."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1")
        res = c.driver("""
            asyncray.init(address="auto")

            @asyncray.remote
            def f():
                return os.getpid()

            result(pid=asyncray.get(f.remote()))
        """)
        daemon = c.daemon_pids("head-node")[0]
        workers = [p for p in psutil.Process(daemon).children(recursive=True) if "asyncray._worker" in _cmdline(p)]
        assert res["pid"] and workers, c.processes()  # the leased worker goes with the driver; a fresh one waits
        pids = [daemon, *(w.pid for w in workers)]
        shm = [d for d in c.dirs() if d.startswith("/dev/shm/")]
        assert shm and all(os.path.isdir(d) for d in shm), c.dirs()
        c.track()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert wait_for(lambda: psutil.Process(daemon).status() == psutil.STATUS_STOPPED, timeout=5)
        t0 = time.monotonic()
        proc = c.cli("stop", "--grace", "1", check=False, timeout=30)
        elapsed = time.monotonic() - t0
        c.stopped = True
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert elapsed < 15, elapsed
        left = lambda: [pid for pid in pids if pid_alive(pid)]
        assert wait_for(lambda: not left(), timeout=5), left()
        assert not [g for d in shm for g in glob.glob(d + "*")], glob.glob("/dev/shm/asyncray-*")  # store and its -spill
        assert not os.path.exists(os.path.join(c.sessions, "cluster.json"))


# ====================================================================== failures
# What the failure drivers share: node ids, start markers, and an outcome that never raises.
FAILURE_PRELUDE = PRELUDE + """
asyncray.init(address="auto")
nodes = {n["NodeID"]: n for n in asyncray.nodes()}
b_node = next(k for k, n in nodes.items() if n["Resources"].get("b"))
head_node = next(k for k in nodes if k != b_node)
marker = sys.argv[1]

def started(name):
    open(marker + "." + name, "w").close()

def wait_started(*names):
    deadline = time.monotonic() + 30
    while not all(os.path.exists(marker + "." + n) for n in names):
        assert time.monotonic() < deadline, f"{names} did not start"
        time.sleep(0.02)

def outcome(ref, timeout):
    t0 = time.monotonic()
    try:
        v = asyncray.get(ref, timeout=timeout)
        return {"value": v, "elapsed": time.monotonic() - t0}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:500], "elapsed": time.monotonic() - t0,
                "system_failure": isinstance(exc, asyncray.exceptions.SystemFailure)}
"""

DRIVER_NODE_DIES = FAILURE_PRELUDE + """

@asyncray.remote(resources={"b": 1}, num_cpus=0)
def produce():
    return np.ones(1 << 17)  # 1 MiB

@asyncray.remote(resources={"b": 1}, num_cpus=0, max_retries=0)
def sleeper():
    started("sleep")
    time.sleep(30)
    return "finished"

@asyncray.remote(num_cpus=0, max_retries=1, scheduling_strategy=NodeAffinitySchedulingStrategy(b_node, soft=True))
def retried():
    me = asyncray.get_runtime_context().get_node_id()
    if me == b_node:
        started("retry")
        time.sleep(30)
    return me

@asyncray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(head_node, soft=False))
def hold():
    started("hold")
    time.sleep(1.5)

@asyncray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)
class Where:
    def node(self):
        return asyncray.get_runtime_context().get_node_id()

obj = produce.remote()
ready, _ = asyncray.wait([obj], timeout=30)
assert ready, "produce() did not finish"
h = hold.remote()
wait_started("hold")
deadline = time.monotonic() + 10
while next(n for n in asyncray.nodes() if n["NodeID"] == head_node)["Available"].get("CPU", 0) > 0:
    assert time.monotonic() < deadline, "the head never saw its node busy"
    time.sleep(0.02)
# The head sees its own node busy: the actor goes to node B. (Creating it earlier, while the
# head's view is stale, hits the actor-placement bug of test_actors_fill_both_nodes.)
actor = Where.remote()
actor_first = asyncray.get(actor.node.remote(), timeout=30)
asyncray.get(h, timeout=30)
s = sleeper.remote()
r = retried.remote()
wait_started("sleep", "retry")
print("READY " + json.dumps({"b_node": b_node, "actor_first": actor_first}), flush=True)
sys.stdin.readline()  # node B has been killed

res = {"sleeper": outcome(s, 25), "object": outcome(obj, 15), "retried": outcome(r, 25)}
sys.stdin.readline()  # the head has marked node B dead
res["actor"] = outcome(actor.node.remote(), 25)
asyncray.shutdown()
result(**res)
"""


def interactive_driver(c: Cluster, script: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start a driver script that prints a ``READY`` line once set up; returns it and that line.

    The script then waits for lines on stdin (the test's cue that it injected a failure).
    """
    drv = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env or c.env, cwd=c.tmpdir,
    )
    assert drv.stdout is not None and drv.stdin is not None
    line = drv.stdout.readline()
    if not line.startswith("READY"):
        drv.kill()
        out, err = drv.communicate(timeout=30)
        raise AssertionError(f"the driver did not get ready: {line}{out}{err}")
    return drv, line


def driver_through_node_death(c: Cluster, script: str, victim: int) -> dict[str, Any]:
    """Run an interactive driver; once it is ready, SIGKILL the node daemon ``victim``, tell the
    driver when the head has declared that node dead, and return the driver's result."""
    drv, line = interactive_driver(c, script)
    try:
        assert drv.stdin is not None
        c.track()
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: any(n["state"] == "DEAD" for n in c.nodes()), timeout=10, interval=0.2)
        drv.stdin.write("dead\n")
        drv.stdin.flush()
        out, err = drv.communicate(timeout=90)
        return parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + out, err))
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()


def test_node_killed_mid_task() -> None:
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", "--node-timeout", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        b_pid = c.daemon_pids("node")[0]
        marker = os.path.join(c.tmpdir, "started")
        drv, line = interactive_driver(c, DRIVER_NODE_DIES, marker)
        try:
            assert drv.stdout is not None and drv.stdin is not None
            ready = json.loads(line[6:])
            b_node = ready["b_node"]
            assert ready["actor_first"] == b_node
            c.track()
            b_workers = psutil.Process(b_pid).children(recursive=True)
            assert b_workers
            os.kill(b_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            drv.stdin.write("killed\n")
            drv.stdin.flush()

            def b_dead() -> bool:
                return any(n["id"] == b_node[:8] and n["state"] == "DEAD" for n in c.nodes())

            assert wait_for(b_dead, timeout=8, interval=0.2), c.status()
            dead_after = time.monotonic() - killed_at
            drv.stdin.write("dead\n")
            drv.stdin.flush()
            out, err = drv.communicate(timeout=80)
            res = parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + out, err))
        finally:
            if drv.poll() is None:
                drv.kill()
                drv.wait()
        assert dead_after < 6, dead_after  # --node-timeout 2 (+ the head's 0.5 s check interval)
        sl = res["sleeper"]
        assert sl.get("error") in ("WorkerCrashedError", "NodeDiedError"), sl
        assert sl["system_failure"] and sl["elapsed"] < 15, sl
        ob = res["object"]  # its task needs resource b, which died with node B: the rebuild fails
        assert ob.get("error") in ("ObjectLostError", "ObjectReconstructionFailedError"), ob
        assert ob["system_failure"], ob
        assert ob["elapsed"] < 15, ob
        rt = res["retried"]
        assert rt.get("value") and rt["value"] != b_node, rt  # retried on the head's node
        act = res["actor"]
        assert act.get("value") and act["value"] != b_node, act  # restarted on the head's node
        # node B's workers went away with it (asyncray stop, at the end, checks its store is gone)
        assert wait_for(lambda: not [p for p in b_workers if _alive(p)], timeout=10)
        # the rest of the cluster still works
        res = c.driver("""
            asyncray.init(address="auto")

            @asyncray.remote
            def f():
                return 5

            result(v=asyncray.get(f.remote()))
        """)
        assert res["v"] == 5


DRIVER_NODE_FREEZES = FAILURE_PRELUDE + """

@asyncray.remote(resources={"b": 1}, num_cpus=0, max_retries=0)
def hang():
    started("hang")
    time.sleep(120)

@asyncray.remote(num_cpus=1, max_retries=1,
                 scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=b_node, soft=True))
def soft():
    if asyncray.get_runtime_context().get_node_id() == b_node:
        started("soft")
        time.sleep(120)
    return asyncray.get_runtime_context().get_node_id()

h = hang.remote()
r = soft.remote()
wait_started("hang", "soft")
print("READY " + json.dumps({"b_node": b_node, "head_node": head_node}), flush=True)
sys.stdin.readline()  # node B is frozen and declared dead

res = {"hang": outcome(h, 30), "soft": outcome(r, 30)}
asyncray.shutdown()
result(**res)
"""


def test_frozen_node_is_declared_dead_its_work_moves_on_and_it_is_fenced() -> None:
    """SIGSTOP a node and its workers: the driver does not wait on it past the node timeout,
    its retriable task reruns elsewhere, and when it wakes it is refused and stops (fencing)."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", "--node-timeout", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        b_pid = c.daemon_pids("node")[0]
        marker = os.path.join(c.tmpdir, "started")
        drv, line = interactive_driver(c, DRIVER_NODE_FREEZES, marker)
        frozen: list[psutil.Process] = []
        try:
            assert drv.stdout is not None and drv.stdin is not None
            ready = json.loads(line[6:])
            c.track()
            b_daemon = psutil.Process(b_pid)
            frozen = [b_daemon, *b_daemon.children(recursive=True)]
            assert len(frozen) > 1
            for p in frozen:
                p.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()

            def b_dead() -> bool:
                return any(n["id"] == ready["b_node"][:8] and n["state"] == "DEAD" for n in c.nodes())

            assert wait_for(b_dead, timeout=10, interval=0.2), c.status()
            drv.stdin.write("dead\n")
            drv.stdin.flush()
            out, err = drv.communicate(timeout=60)
            settled = time.monotonic() - frozen_at
            res = parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + out, err))
            # The frozen node's processes wake up: the head refuses the node, which kills its
            # workers and exits; nothing of it runs on.
            for p in frozen:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGCONT)
            assert wait_for(lambda: not [p for p in frozen if _alive(p)], timeout=15), [
                (p.pid, _cmdline(p)) for p in frozen if _alive(p)
            ]
        finally:
            for p in frozen:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGCONT)
            if drv.poll() is None:
                drv.kill()
                drv.wait()
        hang = res["hang"]
        assert hang.get("error") == "NodeDiedError", hang
        assert ready["b_node"][:8] in hang["message"] and "max_retries=0" in hang["message"], hang
        assert hang["elapsed"] < 5, hang  # at once: the head said so, no waiting on the silent socket
        assert res["soft"].get("value") == ready["head_node"], res["soft"]  # retried on the live node
        assert settled < 20, settled
        assert any(n["state"] == "DEAD" for n in c.nodes())


DRIVER_HEAD_DIES = PRELUDE + """
asyncray.init(address="auto")
marker = sys.argv[1]

@asyncray.remote(max_retries=3)
def slow():
    open(marker, "w").close()
    time.sleep(3)
    return 7

@asyncray.remote
class Named:
    def ping(self):
        return "pong"

def outcome(fn, timeout=60):
    t0 = time.monotonic()
    try:
        return {"value": fn(), "elapsed": time.monotonic() - t0}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:600], "elapsed": time.monotonic() - t0}

r = slow.remote()
while not os.path.exists(marker):
    time.sleep(0.02)
print("READY", flush=True)
sys.stdin.readline()  # the head is frozen
res = {"running": outcome(lambda: asyncray.get(r, timeout=30))}
res["actor"] = outcome(lambda: asyncray.get(Named.remote().ping.remote(), timeout=60))
print("STEP", flush=True)
sys.stdin.readline()  # the head is killed (its node runs on)
res["new_task"] = outcome(lambda: asyncray.get(slow.remote(), timeout=60))
res["actor_after"] = outcome(lambda: asyncray.get(Named.remote().ping.remote(), timeout=60))
result(**res)
"""


def test_losing_the_head_never_hangs_the_driver() -> None:
    """A frozen head: the running task still delivers (driver to worker directly); what needs the
    head waits for it to come back, then fails naming it and what to do. A killed head: tasks on
    this machine's node go on without it; new actors fail after the same bounded wait."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1")
        head_pid = c.daemon_pids("head")[0]
        marker = os.path.join(c.tmpdir, "slow-started")
        env = {**c.env, "ASYNCRAY_HEAD_TIMEOUT_S": "3", "ASYNCRAY_HEAD_RECONNECT_TIMEOUT_S": "4"}
        drv, line = interactive_driver(c, DRIVER_HEAD_DIES, marker, env=env)
        head = psutil.Process(head_pid)
        try:
            assert drv.stdout is not None and drv.stdin is not None
            c.track()
            head.send_signal(signal.SIGSTOP)
            drv.stdin.write("frozen\n")
            drv.stdin.flush()
            step = drv.stdout.readline()
            assert step.startswith("STEP"), step + drv.communicate(timeout=30)[1]
            head.send_signal(signal.SIGKILL)
            drv.stdin.write("killed\n")
            drv.stdin.flush()
            out, err = drv.communicate(timeout=90)
            res = parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + step + out, err))
        finally:
            with contextlib.suppress(psutil.Error):
                head.send_signal(signal.SIGKILL)
            if drv.poll() is None:
                drv.kill()
                drv.wait()
        assert res["running"].get("value") == 7, res["running"]
        for key in ("actor", "actor_after"):
            actor = res[key]
            assert actor.get("error") == "ActorDiedError", actor
            assert "head" in actor["message"] and c.address in actor["message"], actor
            assert "asyncray start --head" in actor["message"], actor
            assert actor["elapsed"] < 20, actor  # the head and reconnect timeouts (3 + 4 s) and a little
        assert res["new_task"].get("value") == 7, res["new_task"]  # no head needed to run a task here


DRIVER_LINEAGE = PRELUDE + """
asyncray.init(address="auto")
from asyncray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
nodes = {n["NodeID"]: n for n in asyncray.nodes()}
b_node = next(k for k, n in nodes.items() if n["Resources"].get("b"))
head_node = next(k for k in nodes if k != b_node)
on_b = NodeAffinitySchedulingStrategy(node_id=b_node, soft=True)

@asyncray.remote(scheduling_strategy=on_b, max_retries=2)
def make(seed):
    return np.random.default_rng(seed).random(200_000), asyncray.get_runtime_context().get_node_id()

@asyncray.remote(scheduling_strategy=on_b, max_retries=2)
def first(pair):
    return pair[0] + 1  # a second generation: its argument is lost too

@asyncray.remote(scheduling_strategy=on_b, max_retries=0)
def once(seed):
    return np.random.default_rng(seed).random(200_000)

a = make.remote(1)
b = first.remote(a)
c = once.remote(3)
ready, _ = asyncray.wait([a, b, c], num_returns=3, timeout=30)
assert len(ready) == 3
print("READY " + json.dumps({"b_node": b_node, "head_node": head_node}), flush=True)
sys.stdin.readline()  # node B, the only holder of a, b and c, is dead

def outcome(ref):
    t0 = time.monotonic()
    try:
        return {"value": asyncray.get(ref, timeout=40), "elapsed": time.monotonic() - t0}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:600], "elapsed": time.monotonic() - t0}

ra, rb, rc = outcome(a), outcome(b), outcome(c)
expect = np.random.default_rng(1).random(200_000)
res = {
    "a_same": bool(np.array_equal(ra["value"][0], expect)) if "value" in ra else ra,
    "a_node": ra["value"][1] if "value" in ra else None,
    "b_same": bool(np.array_equal(rb["value"], expect + 1)) if "value" in rb else rb,
    "c": {k: v for k, v in rc.items() if k != "value"},
    "elapsed": [round(ra["elapsed"], 2), round(rb["elapsed"], 2)],
}
asyncray.shutdown()
result(**res)
"""


@pytest.mark.parametrize("how", ["killed, then get", "get while it is frozen"])
def test_lost_task_results_are_rebuilt_from_lineage(how: str) -> None:
    """A node dies holding the only copies of task results: the owner runs the tasks that made
    them again, recursively (a lost argument first); a task out of retries says so. Also when
    the owner is already fetching from the node as it freezes (the copy fails, the owner waits
    for the node's death and the rebuild instead of reporting the object lost)."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", "--node-timeout", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        b_pid = c.daemon_pids("node")[0]
        b_tree = [psutil.Process(b_pid), *psutil.Process(b_pid).children(recursive=True)]
        drv, line = interactive_driver(c, DRIVER_LINEAGE)
        try:
            assert drv.stdout is not None and drv.stdin is not None
            ready = json.loads(line[6:])
            c.track()
            if how == "killed, then get":
                os.kill(b_pid, signal.SIGKILL)
                assert wait_for(lambda: any(n["state"] == "DEAD" for n in c.nodes()), timeout=10, interval=0.2)
            else:
                b_tree = [psutil.Process(b_pid), *psutil.Process(b_pid).children(recursive=True)]
                for p in b_tree:
                    p.send_signal(signal.SIGSTOP)
            drv.stdin.write("dead\n")
            drv.stdin.flush()
            out, err = drv.communicate(timeout=90)
            res = parse_result(subprocess.CompletedProcess(drv.args, drv.returncode, line + out, err))
        finally:
            if drv.poll() is None:
                drv.kill()
                drv.wait()
            for p in b_tree:  # frozen and fenced: it would exit once woken
                with contextlib.suppress(psutil.Error):
                    p.kill()
        assert res["a_same"] is True, res
        assert res["elapsed"][0] < 20, res  # the node timeout (2 s), a rebuild and a little
        assert res["a_node"] == ready["head_node"], res  # made again, on the live node
        assert res["b_same"] is True, res  # rebuilt after its lost argument
        lost = res["c"]
        assert lost.get("error") == "ObjectLostError" and "max_retries=0" in lost["message"], lost


DRIVER_STALE_BORROWER = PRELUDE + """
asyncray.init(address="auto")
nodes = {n["NodeID"]: n for n in asyncray.nodes()}
head_node = next(k for k, n in nodes.items() if not n["Resources"].get("b"))
b_node = next(k for k, n in nodes.items() if n["Resources"].get("b"))

@asyncray.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=b_node, soft=True), max_retries=2)
def make():
    return np.arange(300_000, dtype=np.float64)  # on node B: rebuilt elsewhere when B dies

@asyncray.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=head_node, soft=False))
class Reader:
    def hold(self, refs):
        self.ref = refs[0]  # borrowed; where it lives is learnt now, the bytes are not fetched
        ready, _ = asyncray.wait([self.ref], timeout=30)
        return len(ready)

    def total(self):
        return float(asyncray.get(self.ref, timeout=40).sum())

ref = make.remote()
reader = Reader.remote()
assert asyncray.get(reader.hold.remote([ref]), timeout=30) == 1
print("READY", flush=True)
sys.stdin.readline()  # node B is dead
try:
    result(total=asyncray.get(reader.total.remote(), timeout=60))
except Exception as exc:
    result(error=type(exc).__name__, message=str(exc)[:400])
"""


def test_a_borrower_with_an_old_location_asks_the_owner_again() -> None:
    """An actor learnt where a borrowed object lived; that node died and the owner rebuilt the
    object elsewhere: the actor's get asks the owner again instead of failing."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "2", "--node-timeout", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        res = driver_through_node_death(c, DRIVER_STALE_BORROWER, c.daemon_pids("node")[0])
        assert res.get("total") == float(sum(range(300_000))), res


DRIVER_HOLDS_THE_CPU = PRELUDE + """
asyncray.init(address="auto")
marker = sys.argv[1]

@asyncray.remote(num_cpus=1)
def hold():
    open(marker, "w").close()
    time.sleep(1000)

ref = hold.remote()
while not os.path.exists(marker):
    time.sleep(0.02)
print("READY", flush=True)
sys.stdin.readline()
"""


def test_a_frozen_driver_does_not_hold_its_leases_forever() -> None:
    """A driver that is SIGSTOPped never closes its sockets: the node's own keepalive drops it
    after the peer timeout, and the CPU its task held goes to others."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", env={"ASYNCRAY_PEER_TIMEOUT_S": "3"})
        marker = os.path.join(c.tmpdir, "holding")
        drv, _ = interactive_driver(c, DRIVER_HOLDS_THE_CPU, marker)
        try:
            c.track()
            drv.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            res = c.driver("""
                asyncray.init(address="auto")
                result(value=asyncray.get(asyncray.remote(lambda: 42).remote(), timeout=40))
            """)
            assert res["value"] == 42 and time.monotonic() - t0 < 25, res
        finally:
            drv.kill()
            drv.communicate(timeout=30)


DRIVER_OTHER_COPY = PRELUDE + """
asyncray.init(address="auto")

@asyncray.remote(resources={"b": 1}, max_retries=0)
def make():
    return np.arange(300_000, dtype=np.float64)  # stored on node B; cannot be rebuilt

@asyncray.remote(resources={"c": 1})
def total(a):
    return float(a.sum())  # node C reads it: C now holds a copy too

ref = make.remote()
assert asyncray.get(total.remote(ref), timeout=30) == float(np.arange(300_000).sum())
print("READY", flush=True)
sys.stdin.readline()  # node B is dead
t0 = time.monotonic()
try:
    value = asyncray.get(ref, timeout=40)
    result(same=bool(np.array_equal(value, np.arange(300_000, dtype=np.float64))), elapsed=time.monotonic() - t0)
except Exception as exc:
    result(error=type(exc).__name__, message=str(exc)[:400])
"""


def test_a_lost_copy_is_replaced_by_another_copy_the_head_knows() -> None:
    """The node holding an object dies, but another node fetched a copy: that copy serves
    (nothing is run again; this object could not be rebuilt anyway)."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1", "--node-timeout", "2")
        c.start_node("--num-cpus", "1", "--resources", '{"b": 1}')
        c.start_node("--num-cpus", "1", "--resources", '{"c": 1}')
        res = driver_through_node_death(c, DRIVER_OTHER_COPY, c.daemon_pids("node")[0])
        assert res.get("same") is True, res


def test_spilled_object_crosses_nodes() -> None:
    """Also: a node's store and spill directories can be chosen, and stop removes what it made there."""
    with new_cluster() as c:
        c.start_head(free_port(), "--num-cpus", "1")
        store_root, spill_root = os.path.join(c.tmpdir, "my-store"), os.path.join(c.tmpdir, "my-spill")
        os.makedirs(store_root)
        os.makedirs(spill_root)
        c.start_node(
            "--num-cpus", "1", "--resources", '{"small": 1}', "--object-store-memory", str(64 << 20),
            "--object-store-dir", store_root, "--object-spilling-directory", spill_root,
        )
        assert [d for d in os.listdir(store_root) if d.startswith("asyncray-node-")], os.listdir(store_root)
        res = c.driver("""
            import glob
            asyncray.init(address="auto")

            @asyncray.remote(resources={"small": 1})
            def make(i):
                return np.full(30 * 2**17, float(i))  # 30 MiB: four of them do not fit in 64 MiB

            @asyncray.remote(num_cpus=1)
            def total(a):
                return float(a.sum())

            refs = [make.remote(i) for i in range(4)]
            asyncray.wait(refs, num_returns=4, timeout=60)
            spilled = glob.glob(os.environ["SPILL_ROOT"] + "/asyncray-node-*-spill/*")
            out = []
            for r in refs:
                try:
                    out.append(asyncray.get(total.remote(r), timeout=30))
                except Exception as exc:
                    out.append(f"{type(exc).__name__}: {exc}"[:300])
            result(out=out, spilled=len(spilled))
        """, env={"SPILL_ROOT": spill_root})
        assert res["out"] == [float(i * 30 * 2**17) for i in range(4)], res["out"]
        assert res["spilled"] >= 1, "nothing went to the chosen spill directory"
        c.stop()
        assert os.listdir(store_root) == [] and os.listdir(spill_root) == []


# ====================================================================== network namespaces
def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.231.0.1/24 and 10.231.0.2/24."""
    if shutil.which("ip") is None:
        pytest.skip("network namespaces: the 'ip' command (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns1, ns2 = f"arc{tag}a", f"arc{tag}b"
    made: list[str] = []
    try:
        for ns in (ns1, ns2):
            r = _run("ip", "netns", "add", ns)
            if r.returncode != 0:
                pytest.skip(f"network namespaces cannot be created here: 'ip netns add' said {r.stderr.strip()!r}")
            made.append(ns)
        va, vb = f"va{tag}", f"vb{tag}"
        steps = [
            ("ip", "link", "add", va, "netns", ns1, "type", "veth", "peer", "name", vb, "netns", ns2),
            ("ip", "-n", ns1, "addr", "add", "10.231.0.1/24", "dev", va),
            ("ip", "-n", ns2, "addr", "add", "10.231.0.2/24", "dev", vb),
            ("ip", "-n", ns1, "link", "set", va, "up"),
            ("ip", "-n", ns2, "link", "set", vb, "up"),
            ("ip", "-n", ns1, "link", "set", "lo", "up"),
            ("ip", "-n", ns2, "link", "set", "lo", "up"),
        ]
        for step in steps:
            r = _run(*step)
            if r.returncode != 0:
                pytest.skip(f"network namespaces: {' '.join(step)!r} failed: {r.stderr.strip()}")
        yield ns1, ns2
    finally:
        for ns in made:
            _run("ip", "netns", "delete", ns)  # deletes the veth pair with it


def test_nodes_in_network_namespaces() -> None:
    with netns_pair() as (ns1, ns2), new_cluster(prefix=("ip", "netns", "exec", ns1)) as c:
        in2 = ["ip", "netns", "exec", ns2]
        port = free_port()
        c.start_head(port, "--host", "10.231.0.1", "--num-cpus", "1")
        assert c.address == f"10.231.0.1:{port}"
        # cluster.json is per machine (per TMPDIR here): the node in ns2 gets its own TMPDIR
        # and the token by --token, and is started and stopped separately.
        node_tmp = tempfile.mkdtemp(prefix="arc-")
        other = Cluster(node_tmp, prefix=tuple(in2))
        try:
            other.cli("start", "--address", c.address, "--host", "10.231.0.2", "--num-cpus", "1",
                      "--resources", '{"far": 1}', "--token", c.token())
            nodes = c.nodes()
            assert sorted(n["address"].rpartition(":")[0] for n in nodes) == ["10.231.0.1", "10.231.0.2"], nodes
            res = c.driver("""
                asyncray.init(address="auto")

                @asyncray.remote(resources={"far": 1})
                def make():
                    return asyncray.get_runtime_context().get_node_id(), np.random.default_rng(3).random(2_500_000)

                @asyncray.remote(resources={"far": 1})
                def digest(a):
                    return hashlib.sha256(a.tobytes()).hexdigest()

                node, ref = make.options(num_returns=2).remote()
                there = asyncray.get(digest.remote(ref))
                here = hashlib.sha256(asyncray.get(ref).tobytes()).hexdigest()
                result(node=asyncray.get(node), driver_node=asyncray.get_runtime_context().get_node_id(),
                       there=there, here=here)
            """)
            assert res["node"] != res["driver_node"]
            assert res["there"] == res["here"]
            far = next(n for n in nodes if n["address"].startswith("10.231.0.2:"))
            assert res["node"].startswith(far["id"])
            other.stop()
        finally:
            other.force_cleanup()
            shutil.rmtree(node_tmp, ignore_errors=True)
