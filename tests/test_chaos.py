"""A short chaos soak (bench/chaos.py): nodes and workers die and freeze under mixed load;
no result is ever wrong and nothing hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_short_chaos_soak_loses_nothing_and_never_hangs(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "chaos.py"), "--seconds", "20", "--nodes", "2", "--seed", "7",
         "--interval", "1.5", "--json", str(out)],
        capture_output=True, text=True, timeout=170, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["operations"] > 20, report
    assert report["wrong_results"] == 0, report
    assert report["hangs"] == 0, report
    assert sum(v for k, v in report["faults"].items() if k != "nodes_started") >= 3, report
    assert report["longest_stall_s"] < report["node_timeout_s"] + 15, report
    assert report["ok"] >= report["operations"] * 0.8, report
