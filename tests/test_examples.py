"""Run each program under examples/ as a script and check what it prints.

The seed tutorials' programs must run unchanged under ``import asyncray as ray``. Each test runs
one example in a subprocess, asserts the values the tutorial shows and, where the tutorial makes
a point about parallelism, a timing bound that proves it. Every run must exit 0 and leave no
process and no session or store directory behind.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TAG_VAR = "ASYNCRAY_EXAMPLE_TEST_TAG"
RUN_TIMEOUT_S = 100.0


def _tagged_processes(tag: str) -> list[str]:
    """Live processes started by one example run: they inherit its tag in their environment."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.environ().get(TAG_VAR) != tag:
                continue
        except psutil.Error:
            continue
        found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
    return found


def _session_dirs(pid: int) -> list[str]:
    """The session and object-store directories of the embedded cluster that ``pid`` drove."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"asyncray-{os.getuid()}", f"s{pid}-*")) + glob.glob(
        f"/dev/shm/asyncray-s{pid}-*"
    )


def run_example(name: str, *, cwd: Path = EXAMPLES, scale: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` to completion; assert it exits 0 and cleans up after itself."""
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{TAG_VAR: tag})
    env.pop("ASYNCRAY_EXAMPLE_SCALE", None)
    if scale is not None:
        env["ASYNCRAY_EXAMPLE_SCALE"] = str(scale)
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            for p in psutil.process_iter():  # don't leave the example's workers running
                try:
                    if p.environ().get(TAG_VAR) == tag:
                        p.kill()
                except psutil.Error:
                    pass
            pytest.fail(f"{name} did not finish in {RUN_TIMEOUT_S} s\nstdout:\n{out}\nstderr:\n{err}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert result.returncode == 0, f"{name} exited {result.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert wait_for(lambda: not _tagged_processes(tag)), f"{name} left processes behind: {_tagged_processes(tag)}"
    assert wait_for(lambda: not _session_dirs(proc.pid)), f"{name} left directories behind: {_session_dirs(proc.pid)}"
    return result


def durations(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"duration = ([0-9.e-]+)", out)]


def results_lists(out: str) -> list[str]:
    return re.findall(r"results? =  (.*)", out)


def test_quickstart() -> None:
    out = run_example("quickstart.py").stdout
    assert "square(7) = 49" in out
    m = re.search(r"four 1 s sleeps -> \[0, 1, 2, 3\] in ([0-9.]+) s", out)
    assert m, out
    assert 1.0 <= float(m.group(1)) < 2.5, "four 1 s tasks on num_cpus=4 must run in parallel"
    assert "ray.get(ray.put(...)) = [1, 2, 3]" in out
    assert "ready ['quick'], 1 still running" in out
    assert "increment() x 3 -> [1, 2, 3]" in out
    assert "['slept 0.5 s', 'slept 0.5 s']" in out
    assert "square(12) = 144" in out
    assert out.rstrip().endswith("done: the cluster is shut down")


def test_seed000_tip1_delay_get() -> None:
    out = run_example("seed000_tip1_delay_get.py").stdout
    sequential, submit_only, eager_get, delayed_get = durations(out)
    res = results_lists(out)
    assert len(res) == 4
    assert sequential >= 4.0 and res[0] == "[0, 1, 2, 3]"
    # Without ray.get the program only submits: it returns at once, with four refs.
    assert submit_only < 0.5
    assert res[1].count("ObjectRef(") == 4
    # ray.get on each task right away serializes them: at least 4 x 1 s.
    assert eager_get >= 4.0 and res[2] == "[0, 1, 2, 3]"
    # One ray.get after submitting all four: they run in parallel on num_cpus=4.
    assert delayed_get < 2.5 and res[3] == "[0, 1, 2, 3]"


def test_seed000_tip2_tiny_tasks() -> None:
    out = run_example("seed000_tip2_tiny_tasks.py", scale=0.2).stdout
    sequential, tiny_remote, mega = durations(out)
    assert sequential > 2.0  # 20,000 x 0.1 ms sleeps
    assert tiny_remote > 0
    # 20 mega_work tasks of 1000 tiny calls each run four at a time: faster than one by one.
    assert mega < sequential
    m = re.search(r"per task overhead \(ms\) = ([0-9.e-]+)", out)
    assert m, out
    assert 0 < float(m.group(1)) < 20


def test_seed000_tip3_put_once() -> None:
    out = run_example("seed000_tip3_put_once.py", scale=0.5).stdout
    by_value, put_once = durations(out)
    # Ten copies of an 80 MB array versus one: putting it once is faster.
    assert put_once < by_value


def test_seed000_tip4_wait() -> None:
    out = run_example("seed000_tip4_wait.py").stdout
    get_all, incremental = durations(out)
    assert re.findall(r"result =  (\d+)", out) == ["6", "6"]
    # ray.get then process: slowest task (0-4 s) + 4 x 1 s of processing.
    assert 4.0 <= get_all < 9.5
    # ray.wait processes each result as it comes: never slower than waiting for all (up to jitter).
    assert 4.0 <= incremental < get_all + 0.5


def test_seed001_tutorial() -> None:
    run = run_example("seed001_tutorial.py")
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ObjectRef(")
    assert lines[1:4] == ["[1, 2, 3]", "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "3"]
    local = float(re.search(r"local f1 x 10 took ([0-9.]+)", run.stdout).group(1))
    remote = float(re.search(r"remote f2 x 10 took ([0-9.]+)", run.stdout).group(1))
    assert local >= 10.0
    assert remote < 2.5, "ten 1 s tasks on ten workers must run in parallel"
    assert lines[6:] == ["[3, 3, 3]", "[1, 2, 3]", "3", "1 (1000,)", "[45, 55, 65, 75, 85]"]
    assert "init(num_workers=N) is the Ray 0.x spelling" in run.stderr


DATA = [
    "(0, 'Learning')",
    "(1, 'Ray')",
    "(2, 'Flexible')",
    "(3, 'Distributed')",
    "(4, 'Python')",
    "(5, 'for')",
    "(6, 'Machine')",
    "(7, 'Learning')",
]


def test_seed002_core_by_example() -> None:
    out = run_example("seed002_core_by_example.py").stdout
    blocks = re.split(r"Runtime: ([0-9.]+) seconds, data:\n", out)
    assert blocks[0] == ""
    runtimes = [float(t) for t in blocks[1::2]]
    bodies = [b.splitlines() for b in blocks[2::2]]
    # Sequential, then the eight retrievals as tasks: every data block lists the database in order.
    assert runtimes[0] >= 2.8 and bodies[0] == DATA
    assert bodies[1] == DATA
    assert runtimes[1] < 2.4, "retrieve_task must run in parallel (about 1.6 s on 2 CPUs)"
    # ray.wait loop: results arrive as they finish (not necessarily in submission order: asyncray
    # may start a later task first when tasks queue for 2 CPUs), then the whole list.
    waited = [line for body in bodies[2:-1] for line in body]
    assert sorted(waited) == DATA
    assert runtimes[2:-1] == sorted(runtimes[2:-1])
    tail = bodies[-1]
    assert tail[:8] == waited
    assert runtimes[-1] < 2.4
    assert tail[8:12] == [
        "((0, 'Learning'), (1, 'Ray'))",
        "((2, 'Flexible'), (3, 'Distributed'))",
        "((4, 'Python'), (5, 'for'))",
        "((6, 'Machine'), (7, 'Learning'))",
    ]
    assert ast.literal_eval(tail[12]) == [ast.literal_eval(d) for d in DATA]
    assert tail[13:] == ["8"]


def test_seed003_fibonacci() -> None:
    lines = run_example("seed003_fibonacci.py").stdout.splitlines()
    assert lines[0] == str(os.cpu_count())
    assert re.fullmatch(r"Sequence size: 100000, Local execution time: [0-9.e-]+", lines[1])
    assert re.fullmatch(r"Sequence size: 100000, Remote execution time: [0-9.e-]+", lines[2])
    assert len(lines) == 3


def test_seed003_gsod_actors(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_gsod_sample.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "expected: {'common_stations': 3, '1980': 3, '2020': 7}" in made.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1980.tar.gz", "2020.tar.gz"]
    out = run_example("seed003_gsod_actors.py", cwd=tmp_path).stdout
    assert out.splitlines() == [
        "Number of stations in common: 3",
        "1980 - High temp count for common stations: 3",
        "2020 - High temp count for common stations: 7",
    ]


def test_seed003_gsod_actors_without_data(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "seed003_gsod_actors.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "make_gsod_sample.py" in proc.stderr


def test_seed004_quick_tutorial() -> None:
    run = run_example("seed004_quick_tutorial.py")
    assert run.stdout.splitlines() == [
        "1 1",
        "1 1",
        "1 1",
        "2",
        "[1, 2]",
        "True 1",
        "long() was cancelled",
        "True",
        "True",
        "1 2",
        "1",
    ]
    assert "wait(object_refs=...) is the Ray 1.x spelling" in run.stderr
