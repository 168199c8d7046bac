"""Workers that go silent: a frozen worker is dropped by keepalive, its task retried elsewhere."""

from __future__ import annotations

import os
import signal
import time

from conftest import is_running, wait_for

import asyncray


def test_a_frozen_worker_is_dropped_and_its_task_retried(monkeypatch, tmp_path):
    """SIGSTOP the worker running a task: the submitter's keepalive drops it after the peer
    timeout, the task reruns on another worker, and the frozen one is killed (its CPU comes back)."""
    if asyncray.is_initialized():
        asyncray.shutdown()
    monkeypatch.setenv("ASYNCRAY_PEER_TIMEOUT_S", "2")
    asyncray.init(num_cpus=2)
    try:
        marker = tmp_path / "first"

        @asyncray.remote(max_retries=1)
        def slow_once(path):
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)
            return os.getpid()

        ref = slow_once.remote(str(marker))
        assert wait_for(lambda: marker.exists() and marker.read_text() != "", 10)
        frozen = int(marker.read_text())
        os.kill(frozen, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            assert asyncray.get(ref, timeout=30) != frozen
            assert time.monotonic() - t0 < 15
            assert wait_for(lambda: not is_running(frozen), 10)  # killed by its node: its CPU is back
            assert asyncray.get([slow_once.remote(str(marker)) for _ in range(2)], timeout=10)
        finally:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
    finally:
        asyncray.shutdown()
