"""What the dashboard costs when nobody looks at it (issue 6, Performance).

    python bench/dashboard_overhead.py [--runs 3] [--tasks 10000]

Runs an embedded runtime (``init(num_cpus=2)``) with ``include_dashboard=False`` and with
``include_dashboard=True``, alternating, ``--runs`` times each, every run in a fresh
subprocess so that imports and memory are measured clean. Each run measures:

* throughput: ``--tasks`` no-op tasks submitted, then one ``get`` of the list (after a warm-up);
* the driver's RSS (the head, the node and the dashboard all live in the driver process),
  after one request to each page's JSON API when the dashboard is on (so the app is warm)
  and a second of settling.

Prints each run, then the medians, the throughput drop in percent and the dashboard's memory
(median RSS with it minus median RSS without it). Targets: drop <= 5 %, memory < 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request  # imported in both modes, so it does not count as the dashboard's memory

RESULT_PREFIX = "OVERHEAD_RESULT "
# One request to each page's API (and the metrics endpoint) warms the app up.
API_PATHS = (
    "/api/cluster", "/api/tasks", "/api/tasks/summary", "/api/actors", "/api/actors/summary",
    "/api/objects", "/api/objects/summary", "/api/logs", "/api/timeline", "/api/jobs", "/metrics",
)
SETTLE_S = 1.0
MB = 1024 * 1024


def noop(x: int) -> int:
    return x


def free_port() -> int:
    """A free TCP port (not ``asyncray.dashboard.free_port``: importing it loads aiohttp)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(dashboard: bool, tasks: int) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import psutil

    import asyncray

    me = psutil.Process()
    rss_before = me.memory_info().rss
    info = asyncray.init(num_cpus=2, include_dashboard=dashboard, dashboard_port=free_port())
    try:
        f = asyncray.remote(noop)
        asyncray.get([f.remote(i) for i in range(200)])  # workers started, function exported
        t0 = time.perf_counter()
        out = asyncray.get([f.remote(i) for i in range(tasks)])
        dt = time.perf_counter() - t0
        assert out[-1] == tasks - 1
        if dashboard:
            assert info.dashboard_url
            for path in API_PATHS:
                with urllib.request.urlopen(info.dashboard_url + path, timeout=30) as r:
                    assert r.status == 200, path
                    r.read()
        time.sleep(SETTLE_S)
        rss = me.memory_info().rss
        assert ("aiohttp.web" in sys.modules) == dashboard  # off: the dashboard's code is not even loaded
    finally:
        asyncray.shutdown()
    return {"tasks_per_s": tasks / dt, "driver_rss_mb": rss / MB, "driver_rss_growth_mb": (rss - rss_before) / MB}


def run_child(dashboard: bool, tasks: int) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "on" if dashboard else "off", "--tasks", str(tasks)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (alternating off, on)")
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per throughput measurement")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_PREFIX + json.dumps(child(args.child == "on", args.tasks)), flush=True)
        return

    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f}; {args.runs} runs per mode, {args.tasks} tasks each")
    for i in range(args.runs):
        for dashboard in (False, True):
            r = run_child(dashboard, args.tasks)
            results[dashboard].append(r)
            print(f"run {i + 1} dashboard {'on ' if dashboard else 'off'}: {r['tasks_per_s']:8.0f} tasks/s, "
                  f"driver RSS {r['driver_rss_mb']:6.1f} MB (grew {r['driver_rss_growth_mb']:.1f} MB in init/run)")
            time.sleep(1.0)  # let the previous run's workers go

    def med(dashboard: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[dashboard])

    off_rate, on_rate = med(False, "tasks_per_s"), med(True, "tasks_per_s")
    off_rss, on_rss = med(False, "driver_rss_mb"), med(True, "driver_rss_mb")
    drop = (off_rate - on_rate) / off_rate * 100
    print(f"median throughput: off {off_rate:.0f} tasks/s, on {on_rate:.0f} tasks/s: "
          f"{drop:+.1f}% drop (target <= 5%)")
    print(f"median driver RSS: off {off_rss:.1f} MB, on {on_rss:.1f} MB: "
          f"dashboard {on_rss - off_rss:.1f} MB (target < 60 MB)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
