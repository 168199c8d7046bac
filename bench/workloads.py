"""Benchmark workloads that run unchanged on asyncray and on Ray.

Each workload is a function ``workload(mod, cfg) -> dict[str, float | str]``: ``mod`` is the framework
module (``asyncray`` or ``ray``), ``cfg`` holds the sizes. Only the public, Ray-compatible API is used
(``init``, ``remote``, ``get``, ``put``, ``wait``, ``shutdown``, awaitable refs), plus ``asyncray.aio``
for the one asyncray-only workload. The two-node workloads (``transfer``, ``two_node_throughput``) also
run the framework's CLI (``asyncray start``/``stop``, ``ray start --block``) in subprocesses.

Subprocess protocol (used by ``bench/run.py``, one fresh process per workload per framework)::

    python bench/workloads.py <asyncray|ray|procpool> <workload> [--quick] [--tiny-tasks N]

``procpool`` (``bench/procpool.py``) is Python's ``ProcessPoolExecutor`` behind ``init``/``remote``/
``get``/``shutdown``; only the workloads registered with ``pool=True`` run on it.

The last line of stdout is ``BENCH_RESULT {json}``: the metrics, or ``{"skipped": why}`` or
``{"error": text}``. The exit status is 0 unless the workload raised.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
NUM_CPUS = 2
LARGE_SHAPE = (10000, 2000)  # 160 MB of float64: the array of seed 000 Tip 3
ACTOR_TIMEOUT_S = 60.0

Metrics = dict[str, Any]


class Skip(Exception):
    """The workload cannot run on this framework (yet); the message says why."""


@dataclass(frozen=True)
class Config:
    """Sizes of the workloads; ``--quick`` shrinks only the long ones."""

    quick: bool = False
    tiny_tasks: int = 100_000
    roundtrip_calls: int = 1000
    noop_tasks: int = 10_000
    put_repeats: int = 5
    small_calls: int = 10_000
    actor_calls: int = 10_000
    nn_calls_per_caller: int = 2000
    transfer_repeats: int = 5
    two_node_tasks: int = 10_000
    settle_s: float = 2.0

    @classmethod
    def make(cls, quick: bool, tiny_tasks: int | None) -> Config:
        """Defaults, or the quick sizes; an explicit ``tiny_tasks`` wins over both."""
        if quick:
            base = cls(quick=True, tiny_tasks=10_000, put_repeats=3, small_calls=5000, transfer_repeats=3,
                       two_node_tasks=5000)
        else:
            base = cls()
        if tiny_tasks is not None:
            base = Config(**{**base.__dict__, "tiny_tasks": tiny_tasks})
        return base


# --------------------------------------------------------------------------- helpers


def _now() -> float:
    return time.perf_counter()


def init_kwargs(mod: ModuleType) -> dict[str, Any]:
    """Same CPU count for both; Ray additionally without its dashboard."""
    kwargs: dict[str, Any] = {"num_cpus": NUM_CPUS}
    if mod.__name__ == "ray":
        kwargs["include_dashboard"] = False
    return kwargs


@contextmanager
def running(mod: ModuleType) -> Iterator[None]:
    """``init(num_cpus=2)`` ... ``shutdown()``, shutdown even if the body raises."""
    mod.init(**init_kwargs(mod))
    try:
        yield
    finally:
        mod.shutdown()


def noop(x: Any = None) -> Any:
    """The no-op task body."""
    return x


def tiny_work(x: int) -> int:
    """Seed 000 Tip 2: a task that sleeps 0.1 ms."""
    time.sleep(0.0001)
    return x


def sleep_then(s: float) -> None:
    """Occupy a worker for a moment (used to reach every worker during warm-up)."""
    time.sleep(s)


def no_work(a: Any) -> None:
    """Seed 000 Tip 3: a task that ignores its (large) argument."""


def warm_up(mod: ModuleType, f: Any, n: int = 100) -> None:
    """Run a few tasks so workers are started and the function is exported everywhere."""
    mod.get([f.remote(i) for i in range(n)])


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# --------------------------------------------------------------------------- task workloads


def wl_init(mod: ModuleType, cfg: Config) -> Metrics:
    """``init(num_cpus=2)`` then ``get(f.remote())``: seconds until the first task returns."""
    f = mod.remote(noop)
    t0 = _now()
    mod.init(**init_kwargs(mod))
    try:
        t_init = _now()
        mod.get(f.remote())
        t_first = _now()
    finally:
        mod.shutdown()
    return {"init_to_first_task_s": t_first - t0, "init_call_s": t_init - t0, "import_s": IMPORT_S}


def _rss(p: Any) -> int:
    import psutil

    try:
        return int(p.memory_info().rss)
    except psutil.Error:  # exited meanwhile
        return 0


def _pss(p: Any) -> int:
    import psutil

    try:
        return int(p.memory_full_info().pss)
    except psutil.Error:
        return 0


def runtime_processes(mod: ModuleType, t_start: float) -> list[Any]:
    """Processes of the runtime other than the driver itself.

    All descendants of the driver; for Ray also processes whose command line names ray
    (not asyncray) that were started after ``init`` (raylet, gcs_server, ``ray::`` workers).
    """
    import psutil

    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    if mod.__name__ == "ray":
        pattern = re.compile(r"\bray\b|ray::")
        for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if (
                    p.pid != me.pid
                    and p.pid not in procs
                    and p.info["create_time"] >= t_start - 1.0
                    and pattern.search(cmd)
                    and "asyncray" not in cmd
                ):
                    procs[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return list(procs.values())


def wl_memory(mod: ModuleType, cfg: Config) -> Metrics:
    """Idle memory of the runtime: RSS of all its processes once a task has run and it settled.

    In the embedded asyncray case the head and node services run inside the driver, so the
    driver's own RSS growth since before ``init`` is counted too (for Ray, the driver's growth is
    counted the same way). PSS (shared pages split between sharers) is reported alongside.
    """
    import psutil

    me = psutil.Process()
    f = mod.remote(noop)
    rss_before = _rss(me)
    pss_before = _pss(me)
    t_start = time.time()
    with running(mod):
        warm_up(mod, f, 20)
        time.sleep(cfg.settle_s)
        procs = runtime_processes(mod, t_start)
        children_rss = sum(_rss(p) for p in procs)
        children_pss = sum(_pss(p) for p in procs)
        driver_delta = _rss(me) - rss_before
        driver_pss_delta = _pss(me) - pss_before
        n = len(procs)
    mb = 1024 * 1024
    return {
        "total_rss_mb": (children_rss + driver_delta) / mb,
        "children_rss_mb": children_rss / mb,
        "driver_rss_delta_mb": driver_delta / mb,
        "total_pss_mb": (children_pss + driver_pss_delta) / mb,
        "processes": n,
    }


def wl_roundtrip(mod: ModuleType, cfg: Config) -> Metrics:
    """``get(f.remote())`` in a loop: milliseconds per call."""
    f = mod.remote(noop)
    with running(mod):
        warm_up(mod, f)
        for _ in range(50):
            mod.get(f.remote())
        n = cfg.roundtrip_calls
        t0 = _now()
        for _ in range(n):
            mod.get(f.remote())
        dt = _now() - t0
    return {"ms_per_call": dt * 1000 / n}


def wl_throughput(mod: ModuleType, cfg: Config) -> Metrics:
    """10,000 no-op tasks, all submitted, then one ``get`` of the list: tasks per second."""
    f = mod.remote(noop)
    with running(mod):
        warm_up(mod, f)
        n = cfg.noop_tasks
        t0 = _now()
        refs = [f.remote(i) for i in range(n)]
        t_sub = _now()
        out = mod.get(refs)
        dt = _now() - t0
        assert out[-1] == n - 1, out[-1]
    return {"tasks_per_s": rate(n, dt), "submit_us_per_task": (t_sub - t0) * 1e6 / n}


def wl_tiny_tasks(mod: ModuleType, cfg: Config) -> Metrics:
    """Seed 000 Tip 2: N tasks of ``time.sleep(0.0001)`` (default 100,000), submit all then get."""
    f = mod.remote(tiny_work)
    with running(mod):
        warm_up(mod, f)
        n = cfg.tiny_tasks
        t0 = _now()
        results = mod.get([f.remote(x) for x in range(n)])
        dt = _now() - t0
        assert len(results) == n
    # time.sleep(0.0001) really sleeps ~155 us: N of them on 2 CPUs cannot beat this.
    return {"seconds": dt, "tasks_per_s": rate(n, dt), "tasks": n, "floor_s": n * 155e-6 / NUM_CPUS}


def wl_asyncio_gather(mod: ModuleType, cfg: Config) -> Metrics:
    """Sync ``init``, then in ``asyncio.run``: ``await asyncio.gather(*refs)`` over 10,000 refs."""
    f = mod.remote(noop)

    async def drive(n: int) -> float:
        t0 = _now()
        refs = [f.remote(i) for i in range(n)]
        out = await asyncio.gather(*refs)
        dt = _now() - t0
        assert out[-1] == n - 1
        return dt

    with running(mod):
        warm_up(mod, f)
        asyncio.run(drive(100))
        n = cfg.noop_tasks
        dt = asyncio.run(drive(n))
    return {"tasks_per_s": rate(n, dt)}


def wl_asyncio_aio(mod: ModuleType, cfg: Config) -> Metrics:
    """asyncray only: ``await aio.init()`` on the caller's loop, gather 10,000 refs, ``aio.shutdown()``."""
    aio = getattr(mod, "aio", None)
    if aio is None:
        try:
            aio = importlib.import_module(f"{mod.__name__}.aio")
        except ImportError:
            raise Skip(f"{mod.__name__} has no aio module") from None
    f = mod.remote(noop)

    async def main(n: int) -> Metrics:
        t0 = _now()
        await aio.init(**init_kwargs(mod))
        try:
            await f.remote(0)
            t_first = _now() - t0
            await asyncio.gather(*[f.remote(i) for i in range(100)])
            t1 = _now()
            out = await asyncio.gather(*[f.remote(i) for i in range(n)])
            dt = _now() - t1
            assert out[-1] == n - 1
            t2 = _now()
            for _ in range(cfg.roundtrip_calls):
                await f.remote()
            rt = _now() - t2
        finally:
            await aio.shutdown()
        return {
            "tasks_per_s": rate(n, dt),
            "await_roundtrip_ms": rt * 1000 / cfg.roundtrip_calls,
            "init_to_first_task_s": t_first,
        }

    return asyncio.run(main(cfg.noop_tasks))


def _large_array() -> Any:
    import numpy as np

    return np.ones(LARGE_SHAPE, dtype=np.float64)  # touched pages, unlike np.zeros


def wl_put_get_large(mod: ModuleType, cfg: Config) -> Metrics:
    """``put`` of a 160 MB float64 array (first and median of repeats) and ``get`` of it."""
    a = _large_array()
    gb = a.nbytes / 1e9
    with running(mod):
        warm_up(mod, mod.remote(noop), 10)
        put_s: list[float] = []
        get_ms: list[float] = []
        for _ in range(cfg.put_repeats):
            t0 = _now()
            ref = mod.put(a)
            put_s.append(_now() - t0)
            for _ in range(3):
                t0 = _now()
                b = mod.get(ref)
                get_ms.append((_now() - t0) * 1000)
                assert b.shape == a.shape and b[-1, -1] == 1.0
                del b
            del ref
            time.sleep(0.2)  # let the store free it
    med = statistics.median(put_s)
    return {
        "put_s": med,
        "put_gbps": gb / med,
        "put_first_s": put_s[0],
        "get_ms": statistics.median(get_ms),
        "get_max_ms": max(get_ms),
    }


def wl_put_gigabytes(mod: ModuleType, cfg: Config) -> Metrics:
    """Ray microbenchmark ``single_client_put_gigabytes``: repeated puts of an 800 MB int64 array."""
    import numpy as np

    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
    gb = arr.nbytes / 1e9
    with running(mod):
        n = cfg.put_repeats
        t0 = _now()
        for _ in range(n):
            ref = mod.put(arr)
            del ref
        dt = _now() - t0
    return {"put_gbps": gb * n / dt}


def wl_tip3(mod: ModuleType, cfg: Config) -> Metrics:
    """Seed 000 Tip 3: a 160 MB array passed to 10 tasks by value, then by ref (one ``put``)."""
    import numpy as np

    f = mod.remote(no_work)
    s = mod.remote(sleep_then)
    with running(mod):
        # Warm up: every worker has the functions and numpy imported.
        mod.get([s.remote(0.05) for _ in range(2 * NUM_CPUS)])
        mod.get([f.remote(np.zeros(10)) for _ in range(2 * NUM_CPUS)])

        t0 = _now()
        a = np.zeros(LARGE_SHAPE)
        mod.get([f.remote(a) for _ in range(10)])
        by_value = _now() - t0
        del a
        time.sleep(0.5)

        t0 = _now()
        a_id = mod.put(np.zeros(LARGE_SHAPE))
        mod.get([f.remote(a_id) for _ in range(10)])
        by_ref = _now() - t0
    return {"by_value_s": by_value, "by_ref_s": by_ref}


def wl_small_objects(mod: ModuleType, cfg: Config) -> Metrics:
    """Small objects: ``put(0)`` calls per second, and ``get`` of one small put ref per second."""
    with running(mod):
        n = cfg.small_calls
        for _ in range(100):
            mod.put(0)
        t0 = _now()
        for _ in range(n):
            mod.put(0)
        put_dt = _now() - t0
        ref = mod.put(b"x" * 100)
        for _ in range(100):
            mod.get(ref)
        t0 = _now()
        for _ in range(n):
            mod.get(ref)
        get_dt = _now() - t0
    return {"puts_per_s": rate(n, put_dt), "gets_per_s": rate(n, get_dt)}


def wl_shutdown(mod: ModuleType, cfg: Config) -> Metrics:
    """Seconds spent in ``shutdown()`` after a few tasks; processes still alive right after and 1 s later."""
    import psutil

    f = mod.remote(noop)
    t_start = time.time()
    mod.init(**init_kwargs(mod))
    warm_up(mod, f, 20)
    procs = runtime_processes(mod, t_start)
    t0 = _now()
    mod.shutdown()
    dt = _now() - t0

    def alive() -> int:
        return sum(1 for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)

    left_now = alive()
    time.sleep(1.0)
    return {"shutdown_s": dt, "processes_left": left_now, "processes_left_after_1s": alive()}


# --------------------------------------------------------------------------- actor workloads


class Pinger:
    """A sync actor."""

    def ping(self, x: Any = None) -> Any:
        return x


class AsyncPinger:
    """An async actor."""

    async def ping(self, x: Any = None) -> Any:
        return x


def make_actor(mod: ModuleType, cls: type, **options: Any) -> Any:
    """Create an actor and complete one call; raise Skip if actors do not work yet."""
    try:
        actor_cls = mod.remote(cls)
        if options:
            actor_cls = actor_cls.options(**options)
        handle = actor_cls.remote()
    except Exception as e:
        raise Skip(f"actor creation raised {type(e).__name__}: {e}") from None
    try:
        mod.get(handle.ping.remote(1), timeout=ACTOR_TIMEOUT_S)
    except Exception as e:
        raise Skip(f"first actor call raised {type(e).__name__}: {e}") from None
    return handle


def wl_actor_roundtrip(mod: ModuleType, cfg: Config) -> Metrics:
    """``get(actor.ping.remote())`` in a loop: milliseconds per call."""
    with running(mod):
        a = make_actor(mod, Pinger)
        for _ in range(100):
            mod.get(a.ping.remote())
        n = cfg.roundtrip_calls
        t0 = _now()
        for _ in range(n):
            mod.get(a.ping.remote())
        dt = _now() - t0
    return {"ms_per_call": dt * 1000 / n}


def _pipelined(mod: ModuleType, a: Any, n: int) -> float:
    mod.get([a.ping.remote(i) for i in range(100)])
    t0 = _now()
    out = mod.get([a.ping.remote(i) for i in range(n)])
    dt = _now() - t0
    assert out[-1] == n - 1
    return dt


def wl_actor_pipelined(mod: ModuleType, cfg: Config) -> Metrics:
    """10,000 calls to one sync actor submitted at once, then one ``get``: calls per second."""
    with running(mod):
        a = make_actor(mod, Pinger)
        dt = _pipelined(mod, a, cfg.actor_calls)
    return {"calls_per_s": rate(cfg.actor_calls, dt)}


def wl_actor_async(mod: ModuleType, cfg: Config) -> Metrics:
    """10,000 calls to one async actor (``async def`` method) at once: calls per second."""
    with running(mod):
        a = make_actor(mod, AsyncPinger)
        dt = _pipelined(mod, a, cfg.actor_calls)
    return {"calls_per_s": rate(cfg.actor_calls, dt)}


def nn_caller(mod_name: str, actor: Any, n: int) -> int:
    """A task that calls its own actor ``n`` times (pipelined) and returns how many answered."""
    m = importlib.import_module(mod_name)
    return len(m.get([actor.ping.remote(i) for i in range(n)]))


def wl_actor_nn(mod: ModuleType, cfg: Config) -> Metrics:
    """n:n actor calls: one caller task per CPU, each calling its own actor 2,000 times."""
    caller = mod.remote(nn_caller)
    with running(mod):
        # Actors hold no CPU (options num_cpus=0) so the caller tasks can take both CPUs.
        actors = [make_actor(mod, Pinger, num_cpus=0) for _ in range(NUM_CPUS)]
        per = cfg.nn_calls_per_caller
        mod.get([caller.remote(mod.__name__, a, 10) for a in actors], timeout=ACTOR_TIMEOUT_S)
        t0 = _now()
        counts = mod.get([caller.remote(mod.__name__, a, per) for a in actors], timeout=300)
        dt = _now() - t0
        assert sum(counts) == per * len(actors), counts
    return {"calls_per_s": rate(per * len(actors), dt)}


# --------------------------------------------------------------------------- two-node cluster workloads
#
# These start a real cluster with the framework's own CLI (``asyncray start`` / ``ray start``): a head
# and a second node as separate processes on this machine, with distinct ports. The workload process
# got a private TMPDIR before importing the framework (see ``main``), so the CLI's records
# (``$TMPDIR/asyncray-<uid>/cluster.json``, Ray's ``$TMPDIR/ray``) never meet another cluster's.
# The cluster is always stopped in a ``finally``, and whatever the stop left (processes, shared-memory
# directories) is removed by pid / path and counted in the ``left_*`` metrics (0 is right).

TRANSFER_ELEMS = 25_000_000  # float64: 200 MB, the object size of issue 5
CLUSTER_START_TIMEOUT_S = 120.0
CLUSTER_STOP_GRACE_S = 15.0
ON_HEAD = {"resources": {"h": 1}}
ON_B = {"resources": {"b": 1}}


def _free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(p: Any) -> bool:
    import psutil

    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _tree(pids: list[int]) -> list[Any]:
    """The processes and all their descendants, as psutil handles (they remember create_time)."""
    import psutil

    out: dict[int, Any] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out[p.pid] = p
            for c in p.children(recursive=True):
                out[c.pid] = c
        except psutil.Error:
            continue
    return list(out.values())


def _kill_survivors(procs: list[Any], grace: float) -> int:
    """Wait ``grace`` s for the processes to exit, then SIGKILL (by pid) the ones still running."""
    import psutil

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.1)
    killed = 0
    for p in procs:
        if _alive(p):  # is_running() also checks that the pid was not reused
            try:
                p.kill()
                killed += 1
            except psutil.Error:
                pass
    return killed


class _ClusterCLI:
    """Start and stop a head and one more node with a framework's CLI, leaving nothing behind."""

    def __init__(self) -> None:
        self.address = ""
        self.left: Metrics = {"left_processes": 0, "left_shm_dirs": 0}

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> str:
        raise NotImplementedError

    def start_node(self, num_cpus: int, resources: dict[str, float]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _AsyncrayCLI(_ClusterCLI):
    """``python -m asyncray.cli start --head`` / ``start --address`` / ``stop``."""

    def _cli(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "asyncray.cli", *args]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=CLUSTER_START_TIMEOUT_S)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:])} failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-600:]}")
        return r.stdout

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> str:
        port = _free_port()
        self._cli("start", "--head", "--port", str(port), "--num-cpus", str(num_cpus),
                  "--resources", json.dumps(resources), "--no-include-dashboard")
        self.address = f"127.0.0.1:{port}"
        return self.address

    def start_node(self, num_cpus: int, resources: dict[str, float]) -> None:
        self._cli("start", "--address", self.address, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources))

    def stop(self) -> None:
        # What `start` recorded (the daemons' pids and directories), read before `stop` removes it.
        try:
            with open(os.path.join(tempfile.gettempdir(), f"asyncray-{os.getuid()}", "cluster.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
        entries = info.get("processes", [])
        procs = _tree([int(e["pid"]) for e in entries])
        dirs = [d for e in entries for d in (e.get("store_dir"), e.get("session_dir")) if d]
        dirs += [e["store_dir"] + "-spill" for e in entries if e.get("store_dir")]
        try:
            self._cli("stop")
        finally:
            # asyncray stop already waits for its daemons and their workers: anything left is a bug.
            self.left["left_processes"] = _kill_survivors(procs, 2.0)
            for d in dirs:
                if os.path.exists(d):
                    self.left["left_shm_dirs"] += d.startswith("/dev/shm")
                    shutil.rmtree(d, ignore_errors=True)


class _RayCLI(_ClusterCLI):
    """``ray start --head --block`` / ``ray start --address --block``, each a child of this process.

    Not ``ray stop``: it ends every Ray process of this user on the machine, other clusters' too. With
    ``--block``, ``ray start`` stays in the foreground and, on SIGTERM, stops the processes it started
    (gcs, raylet, agents, workers), so each node is stopped by the pid of its own ``ray start``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[subprocess.Popen[bytes]] = []
        self.logs: list[str] = []

    def _ray(self, name: str, *args: str) -> None:
        exe = Path(sys.executable).with_name("ray")
        cmd = [str(exe) if exe.exists() else "ray", "start", "--block", "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
               "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()), *args]
        log_path = os.path.join(tempfile.gettempdir(), f"ray-start-{name}.log")
        self.logs.append(log_path)
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.starts.append(proc)
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while True:
            with open(log_path, errors="replace") as f:
                text = f.read()
            if "Ray runtime started" in text:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise RuntimeError(f"ray start ({name}) {why}: {text.strip()[-600:]}")
            time.sleep(0.2)

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> str:
        port = _free_port()
        self._ray("head", "--head", "--port", str(port), "--num-cpus", str(num_cpus),
                  "--resources", json.dumps(resources), "--include-dashboard=false")
        self.address = f"127.0.0.1:{port}"
        return self.address

    def start_node(self, num_cpus: int, resources: dict[str, float]) -> None:
        self._ray("node", "--address", self.address, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources))

    def stop(self) -> None:
        procs = _tree([p.pid for p in self.starts])
        for proc in reversed(self.starts):  # the node first, the head last
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(CLUSTER_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
        self.left["left_processes"] = _kill_survivors(procs, 2.0)
        for proc in self.starts:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@contextmanager
def two_node_cluster(
    mod: ModuleType, head: tuple[int, dict[str, float]], node: tuple[int, dict[str, float]]
) -> Iterator[_ClusterCLI]:
    """A head and a second node started with the CLI, and this driver connected to the head.

    ``head`` and ``node`` are (num_cpus, custom resources). Yields the cluster (its ``left`` metrics
    are filled in once it has been stopped). The driver is shut down and the cluster stopped even
    when starting it or the body raises.
    """
    cluster: _ClusterCLI = _AsyncrayCLI() if mod.__name__ == "asyncray" else _RayCLI()
    try:
        address = cluster.start_head(*head)
        cluster.start_node(*node)
        mod.init(address=address)
        # Ray's driver replaces the SIGTERM handler with one that aborts the process (no `finally`).
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            want = {**head[1], **node[1]}
            deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
            while True:
                have = mod.cluster_resources()
                if all(have.get(k, 0) >= v for k, v in want.items()) and have.get("CPU", 0) >= head[0] + node[0]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster never showed both nodes: {have}")
                time.sleep(0.2)
            yield cluster
        finally:
            mod.shutdown()
    finally:
        cluster.stop()


def make_array(n: int) -> Any:
    """The object that crosses: ``n`` float64 (checksum known: n*(n-1)/2, exact below 2**53)."""
    import numpy as np

    return np.arange(n, dtype=np.float64)


def checksum(a: Any) -> float:
    """The consumer: reads every byte of its argument."""
    return float(a.sum())


def node_id_of(mod_name: str) -> str:
    """The no-op task of ``two_node_throughput``: which node ran it."""
    return str(importlib.import_module(mod_name).get_runtime_context().get_node_id())


def _timed_get(mod: ModuleType, ref: Any) -> tuple[Any, float]:
    t0 = _now()
    value = mod.get(ref)
    return value, _now() - t0


def wl_transfer(mod: ModuleType, cfg: Config) -> Metrics:
    """200 MB from node B to the head's node: a task on the head consumes a ref made on B.

    The object is made and finished (``wait``, without fetching) before the clock starts. Transfer
    time = consumer on the remote object - the same consumer on an object made on its own node;
    driver get = ``get`` in the driver of a remote object - ``get`` of an object on its own node.
    """
    prod = mod.remote(make_array)
    cons = mod.remote(checksum)
    n = TRANSFER_ELEMS
    gb = n * 8 / 1e9
    expect = n * (n - 1) / 2
    with two_node_cluster(mod, (1, {"h": 1}), (1, {"b": 1})) as cluster:
        node_fn = mod.remote(node_id_of)
        head_id = mod.get(node_fn.options(**ON_HEAD).remote(mod.__name__))
        b_id = mod.get(node_fn.options(**ON_B).remote(mod.__name__))
        driver_id = mod.get_runtime_context().get_node_id()
        assert head_id != b_id, "both pinned tasks ran on one node"
        # The driver reads from its own node; a "remote" object for it is one made on the other node.
        driver_far = ON_B if driver_id != b_id else ON_HEAD
        driver_near = ON_HEAD if driver_far is ON_B else ON_B
        # Warm up: workers on both nodes, numpy imported, functions exported, one small crossing.
        small = prod.options(**ON_B).remote(1000)
        assert mod.get(cons.options(**ON_HEAD).remote(small)) == 1000 * 999 / 2
        mod.get(small)
        del small

        def ready(opts: dict[str, Any]) -> Any:
            ref = prod.options(**opts).remote(n)
            mod.wait([ref], fetch_local=False)  # done, but not pulled anywhere yet
            return ref

        local_s, remote_s, drv_near_s, drv_far_s = [], [], [], []
        for _ in range(cfg.transfer_repeats):
            ref = ready(ON_HEAD)
            s, dt = _timed_get(mod, cons.options(**ON_HEAD).remote(ref))
            assert s == expect, s
            local_s.append(dt)
            del ref
            ref = ready(ON_B)
            s, dt = _timed_get(mod, cons.options(**ON_HEAD).remote(ref))
            assert s == expect, f"checksum {s} after the crossing, expected {expect}"
            remote_s.append(dt)
            del ref
            ref = ready(driver_near)
            a, dt = _timed_get(mod, ref)
            drv_near_s.append(dt)
            assert a.nbytes == n * 8 and a[-1] == n - 1
            del a, ref
            ref = ready(driver_far)
            a, dt = _timed_get(mod, ref)
            drv_far_s.append(dt)
            assert a.nbytes == n * 8 and a[-1] == n - 1 and float(a.sum()) == expect
            del a, ref
            time.sleep(0.3)  # let the stores free them
    transfer_s = statistics.median(r - x for r, x in zip(remote_s, local_s, strict=True))
    drv_s = statistics.median(f - x for f, x in zip(drv_far_s, drv_near_s, strict=True))
    return {
        "transfer_gbps": gb / max(transfer_s, 1e-6),
        "transfer_s": transfer_s,
        "consumer_remote_s": statistics.median(remote_s),
        "consumer_local_s": statistics.median(local_s),
        "driver_get_gbps": gb / max(drv_s, 1e-6),
        "driver_get_remote_s": statistics.median(drv_far_s),
        "driver_get_local_s": statistics.median(drv_near_s),
        "driver_on_head_node": int(driver_id == head_id),
        **cluster.left,
    }


def wl_two_node_throughput(mod: ModuleType, cfg: Config) -> Metrics:
    """N no-op tasks (each returns its node id) from one driver into a 1+1 CPU two-node cluster."""
    f = mod.remote(node_id_of)
    name = mod.__name__
    with two_node_cluster(mod, (1, {"h": 1}), (1, {"b": 1})) as cluster:
        head_id = mod.get(f.options(**ON_HEAD).remote(name))
        b_id = mod.get(f.options(**ON_B).remote(name))
        mod.get([f.remote(name) for _ in range(200)])  # warm-up: workers on both nodes
        n = cfg.two_node_tasks
        t0 = _now()
        refs = [f.remote(name) for _ in range(n)]
        t_sub = _now()
        out = mod.get(refs)
        dt = _now() - t0
        counts = {nid: out.count(nid) for nid in set(out)}
    return {
        "tasks_per_s": rate(n, dt),
        "submit_us_per_task": (t_sub - t0) * 1e6 / n,
        "on_head_node": counts.get(head_id, 0),
        "on_other_node": counts.get(b_id, 0),
        **cluster.left,
    }


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Workload:
    """A workload and how to read its metrics: metric name -> (unit, better direction)."""

    fn: Callable[[ModuleType, Config], Metrics]
    metrics: dict[str, tuple[str, str]] = field(default_factory=dict)
    actor: bool = False
    cluster: bool = False  # starts its own multi-node cluster: runs with a private TMPDIR
    pool: bool = False  # also runs on ``procpool`` (ProcessPoolExecutor): plain tasks, init, shutdown


LOWER, HIGHER, INFO = "lower", "higher", "info"

WORKLOADS: dict[str, Workload] = {
    "init": Workload(wl_init, {
        "init_to_first_task_s": ("s", LOWER), "init_call_s": ("s", LOWER), "import_s": ("s", LOWER)}, pool=True),
    "memory": Workload(wl_memory, {
        "total_rss_mb": ("MB", LOWER), "children_rss_mb": ("MB", LOWER), "driver_rss_delta_mb": ("MB", LOWER),
        "total_pss_mb": ("MB", LOWER), "processes": ("", INFO)}),
    "roundtrip": Workload(wl_roundtrip, {"ms_per_call": ("ms", LOWER)}, pool=True),
    "throughput": Workload(wl_throughput, {
        "tasks_per_s": ("/s", HIGHER), "submit_us_per_task": ("us", LOWER)}, pool=True),
    "tiny_tasks": Workload(wl_tiny_tasks, {
        "seconds": ("s", LOWER), "tasks_per_s": ("/s", HIGHER), "tasks": ("", INFO), "floor_s": ("s", INFO)},
        pool=True),
    "asyncio_gather": Workload(wl_asyncio_gather, {"tasks_per_s": ("/s", HIGHER)}),
    "asyncio_aio": Workload(wl_asyncio_aio, {
        "tasks_per_s": ("/s", HIGHER), "await_roundtrip_ms": ("ms", LOWER), "init_to_first_task_s": ("s", LOWER)}),
    "put_get_large": Workload(wl_put_get_large, {
        "put_s": ("s", LOWER), "put_gbps": ("GB/s", HIGHER), "put_first_s": ("s", LOWER),
        "get_ms": ("ms", LOWER), "get_max_ms": ("ms", LOWER)}),
    "put_gigabytes": Workload(wl_put_gigabytes, {"put_gbps": ("GB/s", HIGHER)}),
    "tip3": Workload(wl_tip3, {"by_value_s": ("s", LOWER), "by_ref_s": ("s", LOWER)}),
    "small_objects": Workload(wl_small_objects, {"puts_per_s": ("/s", HIGHER), "gets_per_s": ("/s", HIGHER)}),
    "shutdown": Workload(wl_shutdown, {
        "shutdown_s": ("s", LOWER), "processes_left": ("", LOWER), "processes_left_after_1s": ("", LOWER)}, pool=True),
    "actor_roundtrip": Workload(wl_actor_roundtrip, {"ms_per_call": ("ms", LOWER)}, actor=True),
    "actor_pipelined": Workload(wl_actor_pipelined, {"calls_per_s": ("/s", HIGHER)}, actor=True),
    "actor_async": Workload(wl_actor_async, {"calls_per_s": ("/s", HIGHER)}, actor=True),
    "actor_nn": Workload(wl_actor_nn, {"calls_per_s": ("/s", HIGHER)}, actor=True),
    "transfer": Workload(wl_transfer, {
        "transfer_gbps": ("GB/s", HIGHER), "transfer_s": ("s", LOWER), "consumer_remote_s": ("s", LOWER),
        "consumer_local_s": ("s", LOWER), "driver_get_gbps": ("GB/s", HIGHER), "driver_get_remote_s": ("s", LOWER),
        "driver_get_local_s": ("s", LOWER), "driver_on_head_node": ("", INFO),
        "left_processes": ("", LOWER), "left_shm_dirs": ("", LOWER)}, cluster=True),
    "two_node_throughput": Workload(wl_two_node_throughput, {
        "tasks_per_s": ("/s", HIGHER), "submit_us_per_task": ("us", LOWER), "on_head_node": ("", INFO),
        "on_other_node": ("", INFO), "left_processes": ("", LOWER), "left_shm_dirs": ("", LOWER)}, cluster=True),
}

POOL_MODULE = "procpool"  # bench/procpool.py: ProcessPoolExecutor as a third peer (workloads with pool=True)
IMPORT_S = 0.0  # set by main(): seconds to import the framework module


def emit(result: Metrics) -> None:
    """Print the result line the runner parses."""
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one workload on one framework in this process and print its metrics."""
    global IMPORT_S
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("framework", help="module to benchmark: asyncray, ray or procpool")
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--quick", action="store_true", help="smaller sizes for the long workloads")
    p.add_argument("--tiny-tasks", type=int, default=None, help="task count of tiny_tasks (default 100,000)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    cfg = Config.make(args.quick, args.tiny_tasks)
    wl = WORKLOADS[args.workload]
    # SIGTERM (bench/run.py's timeout) raises, so `finally` blocks stop what the workload started.
    signal.signal(signal.SIGTERM, _on_sigterm)
    private_tmp = None
    if wl.cluster:
        # A private TMPDIR, set before the framework is imported (asyncray reads it at import): the
        # CLI's cluster.json, Ray's temp dir and the session dirs are this run's alone.
        private_tmp = tempfile.mkdtemp(prefix="bench-cluster-")
        os.environ["TMPDIR"] = private_tmp
        tempfile.tempdir = None
        if args.framework == "ray":
            # Ray 2.60's `ray start --head` turns token auth on by itself when ~/.ray/auth_token exists,
            # but a joining `ray start --address` then runs with auth off and is refused. Say it
            # explicitly, with a token of this run's own (asyncray always authenticates too).
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if args.framework == POOL_MODULE and not wl.pool:
        emit({"skipped": f"{args.workload} does not run on {POOL_MODULE} (ProcessPoolExecutor)"})
        return 0
    try:
        t0 = _now()
        mod = importlib.import_module(args.framework)
        IMPORT_S = _now() - t0
        try:
            result = wl.fn(mod, cfg)
        except Skip as e:
            emit({"skipped": str(e)})
            return 0
        except Exception as e:
            traceback.print_exc()
            emit({"error": f"{type(e).__name__}: {e}"})
            return 1
        emit(result)
        return 0
    finally:
        if private_tmp is not None:
            shutil.rmtree(private_tmp, ignore_errors=True)


class Terminated(Exception):
    """The process got SIGTERM."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("SIGTERM (timed out?)")


if __name__ == "__main__":
    sys.exit(main())
