"""How the cost of plain tasks grows with their number: 1k -> 10k -> 100k no-op tasks.

    python bench/scaling.py [--sizes 1000,10000,100000] [--frameworks asyncray[,procpool,ray]]
                            [--json out.json] [--timeout S]

For each size, a fresh subprocess runs ``init(num_cpus=2)``, warms up with 100 tasks, then submits
N no-op tasks (all pending at once) and gathers them with one ``get`` of the list. It reports the time
per task (and the submit part of it) and the driver's RSS growth over its level after warm-up:
right after the last submit (the N tasks pending or in flight: bytes per pending task), the peak
during submit + gather (sampled every 5 ms with psutil, and ``ru_maxrss`` as a check), and what is
left once the refs and results are dropped. asyncray's embedded head and node run inside the driver,
so its RSS covers them; the workers are not counted.

Default: asyncray only (``procpool`` is ``bench/procpool.py``, ProcessPoolExecutor; Ray runs under
``$RAY_PYTHON`` or /work/ray-venv/bin/python). One child run by hand prints ``SCALING_RESULT {json}``::

    python bench/scaling.py --child asyncray 10000
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PREFIX = "SCALING_RESULT "
NUM_CPUS = 2
SAMPLE_S = 0.005  # --sample-ms
DEFAULT_RAY_PYTHON = "/work/ray-venv/bin/python"
MB = 1024 * 1024


def noop(x: Any = None) -> Any:
    """The task body (defined here, so it is pickled from ``__main__`` like in workloads.py)."""
    return x


class PeakRSS:
    """A thread sampling this process's RSS until stopped; ``peak`` is the largest sample."""

    def __init__(self, period_s: float) -> None:
        import psutil

        self._period_s = period_s
        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        if self._period_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def child(framework: str, n: int, sample_s: float = SAMPLE_S) -> dict[str, Any]:
    """One size on one framework, in this (fresh) process."""
    import psutil

    me = psutil.Process()
    mod = importlib.import_module(framework)
    kwargs: dict[str, Any] = {"num_cpus": NUM_CPUS}
    if framework == "ray":
        kwargs["include_dashboard"] = False
    f = mod.remote(noop)
    mod.init(**kwargs)
    try:
        mod.get([f.remote(i) for i in range(100)])  # warm-up: workers started, function exported
        gc.collect()
        time.sleep(0.2)
        base = me.memory_info().rss
        maxrss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with PeakRSS(sample_s) as peak:
            t0 = time.perf_counter()
            refs = [f.remote(i) for i in range(n)]
            t_sub = time.perf_counter()
            rss_submitted = me.memory_info().rss
            out = mod.get(refs)
            t_end = time.perf_counter()
        assert len(out) == n and out[-1] == n - 1, (len(out), out[-1])
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        del refs, out
        gc.collect()
        time.sleep(0.5)
        rss_released = me.memory_info().rss
    finally:
        mod.shutdown()
    total = t_end - t0
    # Without sampling, ru_maxrss is the peak (valid when the level after warm-up was the high-water mark).
    peak_rss = peak.peak if sample_s > 0 else max(peak.peak, base + maxrss - max(maxrss_base, base))
    return {
        "framework": framework,
        "tasks": n,
        "total_s": total,
        "us_per_task": total * 1e6 / n,
        "submit_us_per_task": (t_sub - t0) * 1e6 / n,
        "tasks_per_s": n / total if total > 0 else float("inf"),
        "base_rss_mb": base / MB,
        "submitted_rss_delta_mb": (rss_submitted - base) / MB,
        "bytes_per_pending_task": (rss_submitted - base) / n,
        "peak_rss_delta_mb": (peak_rss - base) / MB,
        "peak_bytes_per_task": (peak_rss - base) / n,
        "maxrss_delta_mb": (maxrss - max(maxrss_base, base)) / MB,
        "released_rss_delta_mb": (rss_released - base) / MB,
    }


def run_child(python: str, framework: str, n: int, timeout: float, sample_ms: float) -> dict[str, Any]:
    env = dict(os.environ)
    if framework == "ray":
        env["RAY_DISABLE_USAGE_STATS"] = "1"
    cmd = [python, str(Path(__file__).resolve()), "--child", framework, str(n), "--sample-ms", str(sample_ms)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=BENCH_DIR.parent, check=False)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "tasks": n, "error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PREFIX):
            res: dict[str, Any] = json.loads(line[len(PREFIX):])
            res["wall_s"] = time.perf_counter() - t0
            return res
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"framework": framework, "tasks": n, "error": f"exit status {proc.returncode}: {tail}"}


COLUMNS = [
    ("framework", "framework", "{}"),
    ("tasks", "tasks", "{:,}"),
    ("total_s", "total s", "{:.3f}"),
    ("us_per_task", "us/task", "{:.1f}"),
    ("growth", "us/task vs smallest", "{:.2f}x"),
    ("submit_us_per_task", "submit us/task", "{:.1f}"),
    ("submitted_rss_delta_mb", "RSS +MB submitted", "{:.1f}"),
    ("bytes_per_pending_task", "B/pending task", "{:,.0f}"),
    ("peak_rss_delta_mb", "peak RSS +MB", "{:.1f}"),
    ("peak_bytes_per_task", "peak B/task", "{:,.0f}"),
    ("released_rss_delta_mb", "RSS +MB after release", "{:.1f}"),
]


def table(results: list[dict[str, Any]]) -> str:
    smallest: dict[str, float] = {}
    for r in results:
        if "us_per_task" in r and r["framework"] not in smallest:
            smallest[r["framework"]] = r["us_per_task"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["framework"], f"{r['tasks']:,}", "error: " + r["error"][:100]])
            continue
        r = {**r, "growth": r["us_per_task"] / smallest[r["framework"]]}
        rows.append([fmt.format(r[key]) for key, _, fmt in COLUMNS])
    heads = [h for _, h, _ in COLUMNS]
    widths = [max([len(h)] + [len(row[i]) for row in rows if len(row) == len(heads)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    for row in rows:
        if len(row) != len(heads):
            lines.append("  ".join(row))
        else:
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="task counts (default 1000,10000,100000)")
    p.add_argument("--frameworks", default="asyncray", help="comma-separated: asyncray, procpool, ray")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results to this file")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per size per framework (default 600)")
    p.add_argument("--ray-python", default=None, help=f"interpreter for Ray (default $RAY_PYTHON, {DEFAULT_RAY_PYTHON})")
    p.add_argument("--sample-ms", type=float, default=SAMPLE_S * 1000,
                   help="RSS sampling period in ms (default 5; 0: no sampling thread, peak from ru_maxrss only)")
    p.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(PREFIX + json.dumps(child(args.child[0], int(args.child[1]), args.sample_ms / 1000)), flush=True)
        return 0

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    ray_python = args.ray_python or os.environ.get("RAY_PYTHON") or DEFAULT_RAY_PYTHON
    load_start = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    for fw in frameworks:
        python = ray_python if fw == "ray" else sys.executable
        for n in sizes:
            print(f"running {n:>9,} tasks on {fw:<8} ...", end=" ", file=sys.stderr, flush=True)
            res = run_child(python, fw, n, args.timeout, args.sample_ms)
            results.append(res)
            print(res.get("error") or f"{res['total_s']:.2f} s", file=sys.stderr, flush=True)

    meta = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "num_cpus": NUM_CPUS,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    print()
    print(f"{meta['time']}, {meta['cpus']} CPUs, Python {meta['python']}, num_cpus={NUM_CPUS}, "
          f"load average {load_start:.2f} at start, {meta['load_end']:.2f} at end")
    print("N no-op tasks submitted, then one get of the list; RSS: the driver's, over its level after warm-up")
    print()
    print(table(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
