"""init/shutdown: errors, idempotence, and that nothing is left running."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import psutil
import pytest
from conftest import is_running, wait_for

import asyncray


def test_second_init_raises_and_ignore_reinit_error():
    asyncray.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="already"):
            asyncray.init()
        info = asyncray.init(ignore_reinit_error=True)
        assert info.node_id == asyncray.get_runtime_context().get_node_id()
    finally:
        asyncray.shutdown()
    asyncray.shutdown()  # twice is fine
    assert not asyncray.is_initialized()


def test_api_before_init_starts_a_runtime_as_ray_does(monkeypatch):
    """put/get/wait/.remote() before init() start the embedded runtime (Ray's auto-init);
    with ASYNCRAY_AUTO_INIT=0 they say what to do instead."""
    monkeypatch.setenv("ASYNCRAY_AUTO_INIT", "0")
    with pytest.raises(RuntimeError, match=r"asyncray\.init\(\)"):
        asyncray.put(1)
    monkeypatch.delenv("ASYNCRAY_AUTO_INIT")
    try:
        assert asyncray.get(asyncray.put(41)) == 41
        assert asyncray.is_initialized()
    finally:
        asyncray.shutdown()
    with pytest.raises(RuntimeError, match=r"asyncray\.init\(\)"):
        asyncray.nodes()  # not the calls Ray auto-inits for


def test_bad_init_keyword():
    with pytest.raises(TypeError, match="num_cpu"):
        asyncray.init(num_cpu=2)


def test_num_workers_is_the_old_num_cpus():
    with pytest.warns(DeprecationWarning, match="num_cpus"):
        asyncray.init(num_workers=3)
    try:
        assert asyncray.cluster_resources()["CPU"] == 3.0
    finally:
        asyncray.shutdown()


def test_shutdown_ends_workers_and_removes_the_store():
    info = asyncray.init(num_cpus=2)
    from conftest import pids_of_workers

    assert wait_for(lambda: len(pids_of_workers()) == 2)
    pids = pids_of_workers()
    asyncray.shutdown()
    assert not any(is_running(p) for p in pids)
    assert not os.path.exists(info.session_dir)


def test_killed_driver_leaves_no_orphans(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            import asyncray as ray
            ray.init(num_cpus=2)

            @ray.remote
            def f():
                return os.getpid()

            print(" ".join(str(p) for p in set(ray.get([f.remote() for _ in range(20)]))), flush=True)
            time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        worker_pids = [int(p) for p in line.split()]
        assert worker_pids
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: not any(psutil.pid_exists(p) for p in worker_pids), 10), "workers outlived the driver"
        assert wait_for(lambda: not glob.glob(f"/dev/shm/asyncray-s{proc.pid}-*"), 10), "store left behind"
        assert wait_for(lambda: not glob.glob(f"{tempfile.gettempdir()}/asyncray-{os.getuid()}/s{proc.pid}-*"), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
