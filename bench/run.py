"""Run the benchmark workloads on asyncray and, when it is installed, on Ray, side by side.

    python bench/run.py [--quick] [--only NAME,...] [--json out.json] [--no-ray] [--no-pool]

Every workload runs in a fresh subprocess per framework (``bench/workloads.py``), so init,
shutdown and memory are measured clean. Ray runs under ``$RAY_PYTHON`` or ``/work/ray-venv/bin/python``
when that interpreter can ``import ray``; it is never a dependency of asyncray. The plain-task
workloads (``init``, ``roundtrip``, ``throughput``, ``tiny_tasks``, ``shutdown``) also run on Python's
own ``concurrent.futures.ProcessPoolExecutor`` (``bench/procpool.py``, the ``pool`` column), under
this interpreter, without Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads import HIGHER, INFO, LOWER, POOL_MODULE, RESULT_PREFIX, WORKLOADS

BENCH_DIR = Path(__file__).resolve().parent
WORKLOADS_PY = BENCH_DIR / "workloads.py"
DEFAULT_RAY_PYTHON = "/work/ray-venv/bin/python"
FRAMEWORKS = ("asyncray", "ray", POOL_MODULE)
TERM_GRACE_S = 30.0  # after a timeout: how long a workload may take to clean up after SIGTERM

Results = dict[str, dict[str, dict[str, Any]]]  # framework -> workload -> metrics


@dataclass(frozen=True)
class Target:
    """A goal from the issues for one asyncray metric.

    kind: ``"<"``/``">="`` against an absolute ``value``; ``"x_ray"``: at least ``value`` times Ray's
    (in the better direction); ``"beat_ray"``: better than Ray; ``">=metric"``: at least asyncray's
    own ``ref`` metric (``workload.metric``); ``">=_and_ray"``: at least ``value`` and at least Ray's
    (judged on ``value`` alone when Ray has no number, ``?`` if that part is met).
    """

    kind: str
    value: float = 0.0
    ref: str = ""
    text: str = ""

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.kind in ("<", ">="):
            return f"{self.kind} {self.value:g}"
        if self.kind == "x_ray":
            return f">= {self.value:g}x Ray"
        if self.kind == "beat_ray":
            return "better than Ray"
        if self.kind == ">=_and_ray":
            return f">= {self.value:g} and >= Ray"
        return f">= {self.ref}"

    def met(self, direction: str, ours: float, ray: float | None, results: Results) -> bool | None:
        """True/False, or None when it cannot be judged (no Ray number)."""
        if self.kind == "<":
            return ours < self.value
        if self.kind == ">=":
            return ours >= self.value
        if self.kind in ("x_ray", "beat_ray"):
            if ray is None:
                return None
            factor = self.value if self.kind == "x_ray" else 1.0
            if direction == HIGHER:
                return ours >= factor * ray if self.kind == "x_ray" else ours > ray
            return ours * factor <= ray if self.kind == "x_ray" else ours < ray
        if self.kind == ">=_and_ray":
            if ours < self.value:
                return False
            return None if ray is None else ours >= ray
        if self.kind == ">=metric":
            wl, metric = self.ref.split(".")
            other = results.get("asyncray", {}).get(wl, {}).get(metric)
            return None if not isinstance(other, int | float) else ours >= other
        return None


# Targets from issues 2 (core), 3 (actors), 4 (object store) and 5 (cluster).
TARGETS: dict[tuple[str, str], Target] = {
    ("init", "init_to_first_task_s"): Target("<", 0.5),
    ("memory", "total_rss_mb"): Target("<", 150),
    ("roundtrip", "ms_per_call"): Target("<", 0.4),
    ("throughput", "tasks_per_s"): Target("x_ray", 5, text=">= 5x Ray (aim 10000)"),
    ("asyncio_gather", "tasks_per_s"): Target(">=metric", ref="throughput.tasks_per_s", text=">= sync throughput"),
    ("asyncio_aio", "tasks_per_s"): Target(">=metric", ref="throughput.tasks_per_s", text=">= sync throughput"),
    ("put_get_large", "put_gbps"): Target(">=", 4),
    ("put_get_large", "get_ms"): Target("<", 1),
    ("tip3", "by_value_s"): Target("beat_ray"),
    ("tip3", "by_ref_s"): Target("beat_ray"),
    ("small_objects", "puts_per_s"): Target("x_ray", 5),
    ("small_objects", "gets_per_s"): Target("x_ray", 5),
    ("actor_roundtrip", "ms_per_call"): Target("<", 0.3),
    ("actor_pipelined", "calls_per_s"): Target("x_ray", 5),
    ("actor_async", "calls_per_s"): Target("x_ray", 5),
    ("transfer", "transfer_gbps"): Target(">=_and_ray", 1, text=">= 1 GB/s and >= Ray"),
    ("transfer", "driver_get_gbps"): Target(">=_and_ray", 1, text=">= 1 GB/s and >= Ray"),
    ("transfer", "left_processes"): Target("<", 1, text="0"),
    ("transfer", "left_shm_dirs"): Target("<", 1, text="0"),
    ("two_node_throughput", "left_processes"): Target("<", 1, text="0"),
    ("two_node_throughput", "left_shm_dirs"): Target("<", 1, text="0"),
}


def find_ray_python(explicit: str | None) -> str | None:
    """The interpreter to run Ray with, or None when none can ``import ray``."""
    cand = explicit or os.environ.get("RAY_PYTHON") or DEFAULT_RAY_PYTHON
    if not Path(cand).exists():
        return None
    try:
        r = subprocess.run([cand, "-c", "import ray"], check=False, capture_output=True, timeout=120,
                           env=child_env("ray"))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cand if r.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def child_env(framework: str) -> dict[str, str]:
    """Environment of a workload subprocess."""
    env = dict(os.environ)
    if framework == "ray":
        env["RAY_DISABLE_USAGE_STATS"] = "1"
        env.setdefault("RAY_DEDUP_LOGS", "0")
    return env


def run_one(python: str, framework: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one workload in a fresh process; always returns a dict (metrics, skipped or error)."""
    cmd = [python, str(WORKLOADS_PY), framework, workload]
    if args.quick:
        cmd.append("--quick")
    if args.tiny_tasks is not None:
        cmd += ["--tiny-tasks", str(args.tiny_tasks)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(framework), cwd=BENCH_DIR.parent)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the workload turns it into an exception, so its `finally` blocks stop the
        # runtime or cluster it started; SIGKILL only if it does not exit in time.
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        if args.verbose:
            sys.stderr.write(stderr)
        return {"error": f"timed out after {args.timeout:g} s", "_wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    result: dict[str, Any] | None = None
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                pass
            break
    if result is None:
        tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
        result = {"error": f"exit status {proc.returncode}, no result: {tail}"}
    if "error" in result and args.verbose:
        sys.stderr.write(stderr)
    result["_wall_s"] = wall
    return result


def fmt(v: Any) -> str:
    """A number in 3-4 significant digits."""
    if not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def compare(direction: str, ours: Any, ray: Any) -> tuple[str, str]:
    """(asyncray/ray, how many times better asyncray is) as text."""
    if not (isinstance(ours, int | float) and isinstance(ray, int | float)) or direction == INFO:
        return "", ""
    if ray == 0 or ours == 0:
        return "", ""
    ratio = ours / ray
    better = ratio if direction == HIGHER else 1 / ratio
    return f"{ratio:.3g}", f"{better:.3g}x"


def header(pool: bool) -> list[str]:
    """Columns of the table; the ProcessPoolExecutor ones only when the pool peer ran."""
    cols = ["workload", "metric", "better", "asyncray", "ray"]
    if pool:
        cols.append("pool")
    cols += ["asyncray/ray", "better vs ray"]
    if pool:
        cols += ["asyncray/pool", "better vs pool"]
    return cols + ["target", "met"]


def build_rows(results: Results, names: list[str], pool: bool = False) -> list[list[str]]:
    """One row per metric; a skipped or failed run is one row with the reason.

    With ``pool``, each row also has the ProcessPoolExecutor value and asyncray's ratio to it
    (blank for the workloads that do not run on the pool).
    """
    ncols = len(header(pool))
    peers = ("ray", POOL_MODULE) if pool else ("ray",)
    rows: list[list[str]] = []
    for name in names:
        wl = WORKLOADS[name]
        ours = results.get("asyncray", {}).get(name, {})
        others = {fw: results.get(fw, {}).get(name) or {} for fw in peers}
        for fw, res in (("asyncray", ours), *others.items()):
            label = "pool" if fw == POOL_MODULE else fw
            for key in ("skipped", "error"):
                if key in res:
                    rows.append([name, f"({label} {key})", *[""] * (ncols - 3), str(res[key])[:110]])
        for metric, (unit, direction) in wl.metrics.items():
            a = ours.get(metric)
            vals = {fw: others[fw].get(metric) for fw in peers}
            if a is None and all(v is None for v in vals.values()):
                continue
            r = vals["ray"]
            target = TARGETS.get((name, metric))
            met = ""
            if target and isinstance(a, int | float):
                ok = target.met(direction, a, r if isinstance(r, int | float) else None, results)
                met = {True: "yes", False: "NO", None: "?"}[ok]
            arrow = {LOWER: "lower", HIGHER: "higher", INFO: "-"}[direction]
            row = [name, f"{metric} ({unit})" if unit else metric, arrow,
                   *(fmt(v) if v is not None else "-" for v in (a, *vals.values()))]
            for fw in peers:
                row += compare(direction, a, vals[fw])
            rows.append(row + [target.describe() if target else "", met])
    return rows


def print_table(rows: list[list[str]], pool: bool = False) -> None:
    cols = header(pool)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(cols)]
    # The last column of skip/error rows holds long text: do not let it widen the table.
    widths[-1] = len(cols[-1])
    line = "  ".join(h.ljust(w) for h, w in zip(cols, widths, strict=True))
    print(line)
    print("-" * len(line))
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            print()
        prev = r[0]
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncray vs Ray benchmarks (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smaller sizes for the long workloads (tiny_tasks 10,000)")
    p.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(WORKLOADS))
    p.add_argument("--json", dest="json_out", default=None, help="also write all results to this file")
    p.add_argument("--tiny-tasks", type=int, default=None, help="task count of tiny_tasks (default 100,000)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per workload subprocess (default 300)")
    p.add_argument("--no-ray", action="store_true", help="run asyncray only")
    p.add_argument("--no-pool", action="store_true", help="skip the ProcessPoolExecutor peer (pool column)")
    p.add_argument("--ray-python", default=None, help="interpreter with ray installed (default $RAY_PYTHON, "
                                                      f"then {DEFAULT_RAY_PYTHON})")
    p.add_argument("-v", "--verbose", action="store_true", help="show the stderr of failed workloads")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")

    ray_python = None if args.no_ray else find_ray_python(args.ray_python)
    pythons = {"asyncray": sys.executable}
    if ray_python:
        pythons["ray"] = ray_python
    else:
        note = "--no-ray" if args.no_ray else "no interpreter that can 'import ray' (set $RAY_PYTHON)"
        print(f"note: Ray column empty: {note}", file=sys.stderr)

    if not args.no_pool:
        pythons[POOL_MODULE] = sys.executable  # stdlib only: needs neither Ray nor asyncray
    results: Results = {fw: {} for fw in pythons}
    load_start = os.getloadavg()[0]
    for name in names:
        for fw, python in pythons.items():
            if fw == POOL_MODULE and not WORKLOADS[name].pool:
                continue
            print(f"running {name:<16} on {fw:<8} ...", end=" ", file=sys.stderr, flush=True)
            res = run_one(python, fw, name, args)
            results[fw][name] = res
            status = res.get("error") or (f"skipped: {res['skipped']}" if "skipped" in res else "ok")
            print(f"{res['_wall_s']:.1f} s {status}"[:160], file=sys.stderr, flush=True)

    print()
    pool = POOL_MODULE in pythons
    peers = " and ".join(["Ray"] * ("ray" in pythons) + ["ProcessPoolExecutor(2) ('pool')"] * pool) or "nothing"
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {cpu_model()} ({platform.machine()}), "
          f"{platform.platform(terse=True)}")
    print(f"asyncray vs {peers}, num_cpus=2 each, {'--quick' if args.quick else 'full'} run, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print("asyncray/X: raw ratio; 'better vs X': how many times better asyncray is (>1x: asyncray wins), "
          "whichever direction ('better') the metric improves in")
    print()
    print_table(build_rows(results, names, pool), pool)

    if args.json_out:
        meta = {"quick": args.quick, "ray_python": ray_python, "pool": pool, "cpus": os.cpu_count(),
                "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        Path(args.json_out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    # Exit status 1 when an asyncray workload failed (a Ray failure is only reported).
    return 1 if any("error" in r for r in results["asyncray"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
