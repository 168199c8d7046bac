"""Where things come from: remote tracebacks name the user's file and line; one job id everywhere."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

import asyncray
from asyncray._store import serialization as ser
from asyncray.util import state

HERE = __file__


def _line_of(text: str) -> int:
    """The line number in this file of the first line containing ``text``."""
    return next(i for i, line in enumerate(Path(HERE).read_text().splitlines(), 1) if text in line)


# ---------------------------------------------------------------- the serialization layer alone
def _made_here():
    """A function and a class cloudpickle must pickle by value (defined in a function: ``<locals>``)."""

    def outer(x):
        inner = lambda y: 1 / y
        return inner(x)

    class Local:
        def method(self):
            raise ValueError("from a method")

    return outer, Local


def test_functions_pickled_by_value_keep_their_file_and_lines():
    outer, _ = _made_here()
    blob = ser.dumps_function(outer)
    assert b"<dynamic-code>" not in blob
    fn = pickle.loads(blob)
    assert fn is not outer and fn.__code__ is not outer.__code__  # really by value
    assert fn.__code__.co_filename == HERE
    assert fn.__code__.co_firstlineno == outer.__code__.co_firstlineno
    nested = [c for c in fn.__code__.co_consts if hasattr(c, "co_filename")]
    assert nested and all(c.co_filename == HERE for c in nested)
    with pytest.raises(ZeroDivisionError) as info:
        fn(0)
    frames = [(str(entry.path), entry.lineno + 1) for entry in info.traceback]
    assert (HERE, _line_of("inner = lambda y: 1 / y")) in frames


def test_classes_pickled_by_value_keep_their_file():
    _, local = _made_here()
    blob = ser.dumps_function(local)
    assert HERE.encode() in blob and b"<dynamic-code>" not in blob  # by value, with its file
    klass = pickle.loads(blob)
    assert klass.method.__code__.co_filename == HERE
    with pytest.raises(ValueError) as info:
        klass().method()
    assert (HERE, _line_of('raise ValueError("from a method")')) in [
        (str(e.path), e.lineno + 1) for e in info.traceback
    ]


# ---------------------------------------------------------------- remote tracebacks, end to end
@asyncray.remote
def fails_here(x):
    return 1 / x  # the failing line


@asyncray.remote
def calls_a_failing_task():
    return asyncray.get(fails_here.remote(0))


@asyncray.remote
class Ctor:
    def __init__(self):
        raise KeyError("ctor failed")  # the constructor's line

    def ping(self):
        return "pong"


@asyncray.remote
class Methods:
    def boom(self):
        raise RuntimeError("method failed")  # the method's line

    async def aboom(self):
        raise RuntimeError("async method failed")  # the async method's line


def _assert_names_this_file(tb: str, marker: str) -> None:
    assert "<dynamic-code>" not in tb, tb
    assert f'File "{HERE}", line {_line_of(marker)}' in tb, tb
    assert marker.split("#")[0].strip() in tb, tb  # the source line itself, read from the file


def test_task_traceback_names_file_and_line(ray):
    with pytest.raises(ZeroDivisionError) as info:
        ray.get(fails_here.remote(0))
    _assert_names_this_file(info.value.traceback_text, "return 1 / x  # the failing line")


def test_nested_task_traceback_names_file_and_line(ray):
    with pytest.raises(ZeroDivisionError) as info:
        ray.get(calls_a_failing_task.remote())
    _assert_names_this_file(str(info.value), "return 1 / x  # the failing line")


def test_lambda_task_traceback_names_file_and_line(ray):
    divide = asyncray.remote(lambda x: 10 / x)  # the lambda's line
    with pytest.raises(ZeroDivisionError) as info:
        ray.get(divide.remote(0))
    _assert_names_this_file(info.value.traceback_text, "divide = asyncray.remote(lambda x: 10 / x)  # the lambda's line")


def test_actor_method_tracebacks_name_file_and_line(ray):
    a = Methods.remote()
    with pytest.raises(RuntimeError) as info:
        ray.get(a.boom.remote())
    _assert_names_this_file(info.value.traceback_text, 'raise RuntimeError("method failed")  # the method\'s line')
    with pytest.raises(RuntimeError) as info:
        ray.get(a.aboom.remote())
    _assert_names_this_file(
        info.value.traceback_text, 'raise RuntimeError("async method failed")  # the async method\'s line'
    )


def test_constructor_traceback_names_file_and_line(ray):
    c = Ctor.remote()
    with pytest.raises(asyncray.exceptions.ActorDiedError) as info:
        ray.get(c.ping.remote())
    _assert_names_this_file(info.value.cause.traceback_text, 'raise KeyError("ctor failed")  # the constructor\'s line')


SCRIPT = '''
import json
import asyncray

asyncray.init(num_cpus=1)

@asyncray.remote
def task(x):
    return {}[x]

@asyncray.remote
class Actor:
    def method(self):
        return [][3]

for ref in (task.remote("k"), Actor.remote().method.remote()):
    try:
        asyncray.get(ref)
    except Exception as err:
        print(json.dumps(err.traceback_text))
asyncray.shutdown()
'''


def test_main_module_tracebacks_name_the_script(tmp_path):
    # A user's script: everything in __main__ travels by value (the worker's __main__ is not it).
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    tbs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('"')]
    assert len(tbs) == 2, out.stdout + out.stderr
    assert f'File "{script}", line 9, in task' in tbs[0] and "return {}[x]" in tbs[0], tbs[0]
    assert f'File "{script}", line 14, in method' in tbs[1] and "return [][3]" in tbs[1], tbs[1]
    assert "<dynamic-code>" not in out.stdout


# ---------------------------------------------------------------- one job, one id
@asyncray.remote
def job_of_task():
    return asyncray.get_runtime_context().get_job_id()


@asyncray.remote
def job_of_nested_task():
    return asyncray.get(job_of_task.remote()), asyncray.get_runtime_context().get_job_id()


@asyncray.remote
class JobReporter:
    def __init__(self):
        self.at_init = asyncray.get_runtime_context().get_job_id()

    def ids(self):
        return self.at_init, asyncray.get_runtime_context().get_job_id()

    async def aid(self):
        return asyncray.get_runtime_context().get_job_id()


def test_one_job_id_everywhere(ray):
    driver = asyncray.get_runtime_context().get_job_id()
    assert len(driver) == 8
    # Several tasks, so that more than one worker (each with a core of its own) answers.
    assert set(ray.get([job_of_task.remote() for _ in range(8)])) == {driver}
    assert ray.get(job_of_nested_task.remote()) == (driver, driver)
    actor = JobReporter.remote()
    assert ray.get(actor.ids.remote()) == (driver, driver)
    assert ray.get(actor.aid.remote()) == driver
    # The head's view (dashboard, `asyncray list`) says the same.
    assert wait_for(lambda: any(t["name"] == "job_of_task" for t in state.list_tasks(limit=10_000)), 10)
    rows = [t for t in state.list_tasks(limit=10_000) if t["name"] in ("job_of_task", "job_of_nested_task")]
    assert rows and {t["job_id"] for t in rows} == {driver}
    actors = [a for a in state.list_actors() if a["class_name"] == "JobReporter"]
    assert [a["job_id"] for a in actors] == [driver]
