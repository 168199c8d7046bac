"""Chaos soak: a multi-node cluster on this machine under mixed load while processes die.

    python bench/chaos.py --seconds 120 --nodes 2 --seed 1 [--json out.json]

A head and ``--nodes`` more nodes are started with the CLI (a private TMPDIR, so nothing meets
another cluster). This process is the driver: it runs task graphs with dependencies, calls to
actors that restart, and large objects that cross nodes, and checks every value against a
checksum computed here. Meanwhile a chaos thread SIGKILLs workers, SIGKILLs nodes, freezes
nodes (SIGSTOP, then SIGCONT after a random pause; a node frozen past the node timeout is
declared dead and fenced), SIGKILLs the head and starts it again on its storage after a random
pause (``asyncray start --head``: nodes and this driver reconnect), and starts a new node for
each one lost.

It reports operations, faults injected, operations that failed with a system error (allowed:
a task out of retries, an object lost with a put), wrong results (must be 0), hangs (an
operation that took longer than its deadline; must be 0), and the longest stall (the slowest
operation; must stay under the node timeout + 5 s for operations that were not hit twice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

NODE_TIMEOUT_S = 3.0
OP_DEADLINE_S = 60.0  # an operation still waiting after this long is a hang
BIG_ELEMENTS = 1_000_000  # 8 MB of float64: crosses nodes through the object store


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "asyncray.cli", *args], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"asyncray {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_processes(tmpdir: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(tmpdir, f"asyncray-{os.getuid()}", "cluster.json")) as f:
            return list(json.load(f).get("processes", []))
    except (OSError, ValueError):
        return []


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class Chaos(threading.Thread):
    """Injects faults into the cluster's nodes and workers until stopped."""

    def __init__(self, env: dict[str, str], tmpdir: str, address: str, rng: random.Random, interval_s: float) -> None:
        super().__init__(name="chaos", daemon=True)
        self.env, self.tmpdir, self.address, self.rng, self.interval_s = env, tmpdir, address, rng, interval_s
        self.faults: dict[str, int] = {
            "kill_worker": 0, "kill_node": 0, "freeze_node": 0, "kill_head": 0, "nodes_started": 0,
        }
        self.halt = threading.Event()
        self.timeline: list[tuple[float, str]] = []  # (monotonic time, fault) for the slow-operation report

    def log(self, what: str) -> None:
        self.timeline.append((time.monotonic(), what))

    def nodes(self) -> list[int]:
        """Nodes that joined with --address (the node beside the head is this driver's own: a
        driver dies with its node, as in Ray, so it is left alone)."""
        return [p["pid"] for p in _cluster_processes(self.tmpdir)
                if p["role"] == "node" and not p.get("head_machine") and _alive(p["pid"])]

    def own_node(self) -> list[int]:
        return [p["pid"] for p in _cluster_processes(self.tmpdir) if p.get("head_machine") and _alive(p["pid"])]

    def run(self) -> None:
        while not self.halt.wait(self.rng.uniform(0.5, 1.5) * self.interval_s):
            nodes = self.nodes()
            fault = self.rng.choice(["kill_worker", "kill_worker", "kill_node", "freeze_node", "kill_head"])
            self.log(fault)
            if fault == "kill_head":
                for pid in self.heads():
                    if _alive(pid):
                        _signal(pid, signal.SIGKILL)
                self.halt.wait(self.rng.uniform(0.5, 3.0))  # the cluster runs headless meanwhile
                _cli(self.env, "start", "--head", "--num-cpus", "1", "--node-timeout", str(NODE_TIMEOUT_S),
                     "--no-include-dashboard")
                self.log("head restarted")
                self.faults[fault] += 1
                continue
            if fault == "kill_worker":
                workers = [w for n in [*nodes, *self.own_node()] for w in _children(n)]
                if workers:
                    _signal(self.rng.choice(workers), signal.SIGKILL)
                    self.faults[fault] += 1
                continue
            if not nodes:
                continue
            victim = self.rng.choice(nodes)
            if fault == "kill_node":
                for pid in [victim, *_children(victim)]:
                    _signal(pid, signal.SIGKILL)
            else:
                frozen = [victim, *_children(victim)]
                for pid in frozen:
                    _signal(pid, signal.SIGSTOP)
                self.halt.wait(self.rng.choice([1.0, NODE_TIMEOUT_S + 2.0]))  # short, or past the node timeout
                for pid in frozen:
                    _signal(pid, signal.SIGCONT)
            self.faults[fault] += 1
            self.replace_lost_nodes()

    def heads(self) -> list[int]:
        return [p["pid"] for p in _cluster_processes(self.tmpdir) if p["role"] == "head"]

    def replace_lost_nodes(self, want: int | None = None) -> None:
        time.sleep(NODE_TIMEOUT_S + 1)  # let a fenced node exit first
        want = self.want if want is None else want
        while len(self.nodes()) < want and not self.halt.is_set():
            _cli(self.env, "start", "--address", self.address, "--num-cpus", "2", "--resources", '{"worker_node": 1}')
            self.faults["nodes_started"] += 1

    want = 0


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def soak(seconds: float, nodes: int, seed: int, interval_s: float = 2.0) -> dict[str, Any]:
    """Run the soak; returns the report."""
    tmpdir = tempfile.mkdtemp(prefix="asyncray-chaos-")
    env = {**os.environ, "TMPDIR": tmpdir, "ASYNCRAY_NODE_UNREACHABLE_TIMEOUT_S": "20"}
    os.environ["TMPDIR"] = tmpdir  # this process is the driver: it must find this cluster
    tempfile.tempdir = tmpdir  # (asyncray reads its session directory from here at import)
    import numpy as np

    import asyncray

    port = _free_port()
    address = f"127.0.0.1:{port}"
    rng = random.Random(seed)
    chaos = Chaos(env, tmpdir, address, rng, interval_s)
    chaos.want = nodes
    counts = {"operations": 0, "ok": 0, "system_failures": 0, "wrong_results": 0, "hangs": 0}
    failures: dict[str, int] = {}
    examples: dict[str, str] = {}  # the first message of each kind of failure
    slowest = 0.0
    slow_ops: list[dict[str, Any]] = []  # operations slower than the node timeout, with the faults just before
    try:
        _cli(env, "start", "--head", "--port", str(port), "--num-cpus", "1", "--node-timeout", str(NODE_TIMEOUT_S),
             "--no-include-dashboard")
        chaos.replace_lost_nodes()
        chaos.faults["nodes_started"] = 0
        asyncray.init(address=address)

        @asyncray.remote(max_retries=5)
        def make(seed: int, n: int) -> Any:
            return np.random.default_rng(seed).random(n)

        @asyncray.remote(max_retries=5)
        def digest(a: Any) -> str:
            return hashlib.sha256(a.tobytes()).hexdigest()

        @asyncray.remote(max_retries=5)
        def total(*parts: Any) -> float:
            return float(sum(p.sum() for p in parts))

        @asyncray.remote(max_restarts=-1, max_task_retries=-1)
        class Hasher:
            def digest(self, seed: int) -> str:
                return hashlib.sha256(str(seed).encode()).hexdigest()

        hashers = [Hasher.remote() for _ in range(2)]

        def expected_array(seed: int, n: int) -> Any:
            return np.random.default_rng(seed).random(n)

        def one_op(i: int) -> None:
            kind = i % 3
            if kind == 0:  # a graph: four producers, one consumer that depends on all of them
                seeds = [rng.randrange(1 << 30) for _ in range(4)]
                got = asyncray.get(total.remote(*[make.remote(s, 1000) for s in seeds]), timeout=OP_DEADLINE_S)
                want = float(sum(expected_array(s, 1000).sum() for s in seeds))
                ok = abs(got - want) < 1e-6
            elif kind == 1:  # an actor call that survives restarts
                s = rng.randrange(1 << 30)
                got = asyncray.get(rng.choice(hashers).digest.remote(s), timeout=OP_DEADLINE_S)
                ok = got == hashlib.sha256(str(s).encode()).hexdigest()
            else:  # a large object made on one node, read on another, checked here too
                s = rng.randrange(1 << 30)
                ref = make.options(scheduling_strategy="SPREAD").remote(s, BIG_ELEMENTS)
                want = hashlib.sha256(expected_array(s, BIG_ELEMENTS).tobytes()).hexdigest()
                there = asyncray.get(digest.options(scheduling_strategy="SPREAD").remote(ref), timeout=OP_DEADLINE_S)
                here = hashlib.sha256(asyncray.get(ref, timeout=OP_DEADLINE_S).tobytes()).hexdigest()
                ok = there == want == here
            counts["ok" if ok else "wrong_results"] += 1

        chaos.start()
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            counts["operations"] += 1
            try:
                one_op(i)
            except asyncray.GetTimeoutError:
                counts["hangs"] += 1
            except asyncray.exceptions.SystemFailure as exc:
                counts["system_failures"] += 1
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                examples.setdefault(type(exc).__name__, str(exc)[:300])
            took = time.monotonic() - t0
            slowest = max(slowest, took)
            if took > NODE_TIMEOUT_S:
                recent = [f"{what} at {at - t0:+.1f} s" for at, what in chaos.timeline if t0 - 10 < at <= t0 + took]
                slow_ops.append({"op": ["graph", "actor call", "large object"][i % 3], "seconds": round(took, 2),
                                 "faults": recent})
            i += 1
    finally:
        chaos.halt.set()
        if chaos.is_alive():
            chaos.join(NODE_TIMEOUT_S + 15)
        everyone = [c for p in _cluster_processes(tmpdir) for c in [p["pid"], *_children(p["pid"])]]
        for pid in everyone:
            _signal(pid, signal.SIGCONT)
        if asyncray.is_initialized():
            asyncray.shutdown()
        try:
            _cli(env, "stop")
        except RuntimeError as exc:
            print(f"stop: {exc}", file=sys.stderr)
        for pid in everyone:  # whatever stop could not reach (it reads the same records)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return {
        "seconds": seconds, "nodes": nodes, "seed": seed, **counts, "failures_by_type": failures,
        "faults": chaos.faults, "longest_stall_s": round(slowest, 2), "node_timeout_s": NODE_TIMEOUT_S,
        "slow_operations": slow_ops, "failure_examples": examples,
    }


def main() -> None:
    """Run a soak and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval", type=float, default=2.0, help="mean seconds between faults")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args()
    report = soak(args.seconds, args.nodes, args.seed, args.interval)
    rows = [
        ("operations", report["operations"]), ("ok", report["ok"]),
        ("failed with a system error", f"{report['system_failures']} {report['failures_by_type'] or ''}"),
        ("wrong results (must be 0)", report["wrong_results"]), ("hangs (must be 0)", report["hangs"]),
        ("faults injected", ", ".join(f"{k} {v}" for k, v in report["faults"].items())),
        ("longest stall", f"{report['longest_stall_s']} s (node timeout {report['node_timeout_s']} s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for kind, text in report["failure_examples"].items():
        print(f"  {kind}: {text}")
    for op in report["slow_operations"]:
        print(f"  slow: {op['op']} took {op['seconds']} s; faults around it: {', '.join(op['faults']) or 'none'}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
