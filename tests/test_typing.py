"""The types users see, checked by running mypy (STYLE 7): a right program passes, a wrong one is reported."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason="mypy is a test dependency: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", os.path.join(ROOT, "pyproject.toml"), *paths],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )


@pytest.mark.slow
def test_public_types_check() -> None:
    out = mypy(os.path.join(HERE, "typing", "check_public_types.py"))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_a_wrong_argument_type_is_reported() -> None:
    path = os.path.join(HERE, "typing", "wrong_argument.py")
    out = mypy(path)
    assert out.returncode == 1, out.stdout + out.stderr
    with open(path) as f:
        expected = {n for n, line in enumerate(f.read().splitlines(), 1) if "# E:" in line}
    reported = {int(m) for m in re.findall(r"wrong_argument\.py:(\d+): error", out.stdout)}
    assert reported == expected, out.stdout
    assert 'incompatible type "str"; expected "int"' in out.stdout
