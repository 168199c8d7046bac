"""The state and job commands, each in a subprocess, against a cluster started with
``asyncray start --head`` (one per module: cluster.json is per machine, keep this short)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from asyncray import _session
from asyncray.dashboard import free_port

JOB = textwrap.dedent("""
    import sys, time
    import asyncray

    asyncray.init()

    @asyncray.remote
    def cube(x):
        print("cube-marker", x)
        return x ** 3

    @asyncray.remote
    def fail():
        raise KeyError("job-failure")

    @asyncray.remote
    class Keeper:
        def ping(self):
            return "pong"

    k = Keeper.remote()
    print("sum", sum(asyncray.get([cube.remote(i) for i in range(12)])), flush=True)
    print("ping", asyncray.get(k.ping.remote()), flush=True)
    try:
        asyncray.get(fail.remote())
    except KeyError:
        print("caught", flush=True)
    time.sleep(1.5)  # let the once-a-second task report reach the head
    sys.exit(3)
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASYNCRAY_ADDRESS", "ASYNCRAY_TOKEN")}
    # The job's ``python`` is the one on PATH, as for a user in an activated venv: make it ours
    # even when the suite runs as /path/to/venv/bin/python -m pytest without activating it.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def cli(*args: str, cwd: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m asyncray.cli ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "asyncray.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=cwd)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head (and node) in the background with its dashboard; the address and token flags to reach it."""
    info = _session.read_cluster()
    if info and info.get("processes"):
        pytest.skip("another cluster started on this machine is running (asyncray stop ends it)")
    port = free_port()
    start = cli("start", "--head", "--port", str(port), "--num-cpus", "2", "--dashboard-port", str(free_port()))
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        with open(_session.TOKEN_FILE) as f:
            token = f.read().strip()
        url = next(line.split()[-1] for line in start.stdout.splitlines() if "Dashboard:" in line)
        work = tmp_path_factory.mktemp("job")
        (work / "job.py").write_text(JOB)
        yield {"flags": ["--address", f"127.0.0.1:{port}", "--token", token], "url": url, "work": str(work)}
    finally:
        stop = cli("stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr


def test_submit_streams_output_and_exit_code(cluster: dict[str, Any]) -> None:
    r = cli("submit", *cluster["flags"], "--working-dir", cluster["work"], "--", "python", "job.py")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "sum 4356" in r.stdout and "ping pong" in r.stdout and "caught" in r.stdout
    assert "cube-marker" in r.stdout  # worker output reaches the job's driver, and so the stream
    assert "submitted" in r.stderr

    jobs = json.loads(cli("job", "list", *cluster["flags"], "--format", "json").stdout)
    job = jobs[0]
    assert job["status"] == "FAILED" and job["exit_code"] == 3 and job["entrypoint"] == "python job.py"
    status = cli("job", "status", job["job_id"], *cluster["flags"])
    assert status.stdout.strip() == f"{job['job_id']}: FAILED (exit code 3)"
    assert "sum 4356" in cli("job", "logs", job["job_id"], *cluster["flags"]).stdout
    with urllib.request.urlopen(cluster["url"] + "/api/jobs") as resp:  # the dashboard shows jobs
        assert [j["job_id"] for j in json.load(resp)] == [job["job_id"]]


def test_list_and_summary(cluster: dict[str, Any]) -> None:
    flags = cluster["flags"]
    tasks = json.loads(cli("list", "tasks", "--format", "json", *flags).stdout)
    assert sum(1 for t in tasks if t["name"] == "cube" and t["state"] == "FINISHED") == 12
    failed = cli("list", "tasks", "--filter", "state=FAILED", "--filter", "name=fail", *flags)
    assert failed.returncode == 0 and failed.stdout.count("KeyError") == 1, failed.stdout
    assert failed.stdout.splitlines()[0].split() == ["TASK", "NAME", "STATE", "PID", "DURATION", "ERROR"]

    summary = cli("summary", "tasks", *flags).stdout
    assert "cube" in summary and "FINISHED 12" in summary

    nodes = json.loads(cli("list", "nodes", "--format", "json", *flags).stdout)
    assert len(nodes) == 1 and nodes[0]["alive"]
    workers = json.loads(cli("list", "workers", "--format", "json", *flags).stdout)
    assert workers and all(w["pid"] > 0 for w in workers)
    actors = json.loads(cli("list", "actors", "--format", "json", *flags).stdout)
    assert [a["class_name"] for a in actors] == ["Keeper"]
    assert "Keeper" in cli("summary", "actors", *flags).stdout
    assert cli("list", "objects", *flags).returncode == 0
    assert "Objects in shared memory" in cli("summary", "objects", *flags).stdout
    bad = cli("list", "tasks", "--filter", "nokey", *flags)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stdout


def test_logs_and_timeline(cluster: dict[str, Any], tmp_path: Any) -> None:
    flags = cluster["flags"]
    listing = cli("logs", *flags)
    assert listing.returncode == 0 and "worker" in listing.stdout
    tasks = json.loads(cli("list", "tasks", "--filter", "name=cube", "--format", "json", *flags).stdout)
    pid = str(tasks[0]["worker_pid"])
    lines = cli("logs", pid, "--grep", "cube-marker", *flags)
    assert lines.returncode == 0 and "cube-marker" in lines.stdout, lines.stdout + lines.stderr
    assert cli("logs", "999999999", *flags).returncode == 1

    out = tmp_path / "trace.json"
    r = cli("timeline", str(out), *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    spans = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert sum(1 for e in spans if e["name"] == "cube") == 12


def test_job_stop(cluster: dict[str, Any]) -> None:
    flags = cluster["flags"]
    r = cli("submit", "--no-wait", *flags, "--", "python", "-c", "import time; print('started', flush=True); time.sleep(60)")
    job_id = r.stdout.strip()
    assert r.returncode == 0 and job_id.startswith("job_"), r.stdout + r.stderr
    deadline = time.monotonic() + 10
    while "started" not in cli("job", "logs", job_id, *flags).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cli("job", "stop", job_id, *flags).stdout.strip() == f"Job {job_id} stopped."
    assert cli("job", "status", job_id, *flags).stdout.startswith(f"{job_id}: STOPPED")


def test_unreachable_cluster_is_one_line() -> None:
    r = cli("list", "nodes", "--address", f"127.0.0.1:{free_port()}", "--token", "x")
    assert r.returncode == 1 and "cannot reach the cluster" in r.stdout and "Traceback" not in r.stderr
