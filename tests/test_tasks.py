"""Tasks through the sync facade: values, order, dependencies, nesting, errors, cancel."""

from __future__ import annotations

import os
import time

import pytest
from conftest import is_running, wait_for

import asyncray
from asyncray import exceptions as exc


@asyncray.remote
def add(a, b):
    return a + b


@asyncray.remote
def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


@asyncray.remote
def fail(msg):
    raise KeyError(msg)


@asyncray.remote(num_returns=3)
def three():
    return 1, 2, 3


@asyncray.remote
def pid():
    return os.getpid()


@asyncray.remote
def sub_experiment(i, j):
    return i + j


@asyncray.remote
def run_experiment(i):
    return sum(asyncray.get([sub_experiment.remote(i, j) for j in range(10)]))


@asyncray.remote
async def async_double(x):
    import asyncio

    await asyncio.sleep(0.01)
    return 2 * x


class Custom(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


@asyncray.remote
def raise_custom(code):
    raise Custom(code)


def test_values_and_order(ray):
    refs = [add.remote(i, 1) for i in range(50)]
    assert ray.get(refs) == [i + 1 for i in range(50)]
    assert ray.get(add.remote(2, 3)) == 5


def test_put_get_and_ref_arguments(ray):
    x = ray.put([1, 2, 3])
    assert ray.get(x) == [1, 2, 3]
    assert ray.get(add.remote(ray.put(1), ray.put(2))) == 3


def test_chain_and_tree_reduce(ray):
    x = add.remote(0, 1)
    y = add.remote(x, 1)
    z = add.remote(y, 1)
    assert ray.get(z) == 3
    data = [add.remote(i, 0) for i in range(16)]
    while len(data) > 1:
        data.append(add.remote(data.pop(0), data.pop(0)))
    assert ray.get(data[0]) == sum(range(16))


def test_refs_nested_in_containers_stay_refs(ray):
    @asyncray.remote
    def first_of(lst):
        return type(lst[0]).__name__, asyncray.get(lst[0])

    assert ray.get(first_of.remote([ray.put(42)])) == ("ObjectRef", 42)


def test_num_returns(ray):
    a, b, c = three.remote()
    assert ray.get([a, b, c]) == [1, 2, 3]
    x, y = add.options(num_returns=2).remote((5,), (6,))
    assert ray.get([x, y]) == [5, 6]


def test_wrong_number_of_returns_is_an_error(ray):
    x, _y = add.options(num_returns=2).remote(1, 2)
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(x)


def test_nested_tasks_on_two_cpus_do_not_deadlock(ray):
    assert ray.get([run_experiment.remote(i) for i in range(5)], timeout=30) == [45, 55, 65, 75, 85]


def test_parallelism_four_sleeps(ray):
    start = time.monotonic()
    assert ray.get([sleep_then.remote(i, 1.0) for i in range(2)]) == [0, 1]
    assert time.monotonic() - start < 1.8


def test_wait_keeps_input_order_and_honours_num_returns(ray):
    refs = [sleep_then.remote(0, 0.6), sleep_then.remote(1, 0.05), sleep_then.remote(2, 0.1)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=5)
    assert ready == [refs[1], refs[2]]
    assert not_ready == [refs[0]]
    ready, not_ready = ray.wait(refs, num_returns=3)
    assert ready == refs and not_ready == []


def test_wait_timeout_returns_partial(ray):
    refs = [sleep_then.remote(0, 2.0)]
    t = time.monotonic()
    ready, not_ready = ray.wait(refs, timeout=0.1)
    assert ready == [] and not_ready == refs
    assert time.monotonic() - t < 1.0


def test_wait_rejects_bad_arguments(ray):
    r = ray.put(1)
    with pytest.raises(ValueError, match="more than"):
        ray.wait([r], num_returns=2)
    with pytest.raises(ValueError, match="same ObjectRef"):
        ray.wait([r, r])
    with pytest.raises(TypeError, match="list"):
        ray.wait(r)


def test_seed_era_spellings_warn(ray):
    r = ray.put(1)
    with pytest.warns(DeprecationWarning, match="object_refs"):
        ready, _ = ray.wait(object_refs=[r], num_returns=1, timeout=None)
    assert ready == [r]
    with pytest.warns(DeprecationWarning, match="num_returns"):

        @asyncray.remote(num_return_vals=2)
        def two():
            return 1, 2

    assert ray.get(list(two.remote())) == [1, 2]


def test_get_timeout_is_a_timeout_error(ray):
    r = sleep_then.remote(1, 3.0)
    with pytest.raises(exc.GetTimeoutError) as info:
        ray.get(r, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert "timed out" in str(info.value)


def test_task_error_is_also_the_original_class(ray):
    with pytest.raises(KeyError) as info:
        ray.get(fail.remote("missing"))
    err = info.value
    assert isinstance(err, exc.TaskError)
    assert err.args == ("missing",)
    assert err.function_name == "fail"
    assert "raise KeyError(msg)" in err.traceback_text
    assert "missing" in str(err)


def test_custom_exception_keeps_attributes(ray):
    with pytest.raises(Custom) as info:
        ray.get(raise_custom.remote(7))
    assert info.value.code == 7


def test_errors_propagate_through_dependencies(ray):
    with pytest.raises(KeyError):
        ray.get(add.remote(fail.remote("up"), 1))


def test_list_get_raises_first_error(ray):
    with pytest.raises(KeyError):
        ray.get([add.remote(1, 1), fail.remote("x")])


def test_unpicklable_argument_names_the_argument(ray):
    import threading

    with pytest.raises(exc.SerializationError, match="argument 1 of add"):
        add.remote(1, threading.Lock())


def test_bad_options_fail_at_the_call_site(ray):
    with pytest.raises(ValueError, match="unknown option 'num_cpu'"):
        add.options(num_cpu=1)
    with pytest.raises(ValueError, match="num_cpus must be"):
        add.options(num_cpus=-1)
    with pytest.raises(ValueError, match="resource 'foo'"):
        add.options(resources={"foo": -2})


def test_infeasible_resources_warn_at_once_then_fail_with_a_clear_error(ray, capfd, monkeypatch):
    monkeypatch.setenv("ASYNCRAY_UNSCHEDULABLE_TIMEOUT_S", "1.5")
    ref = add.options(num_cpus=64).remote(1, 2)
    from conftest import wait_for

    seen = []
    assert wait_for(lambda: seen.append(capfd.readouterr().err) or "cannot be scheduled yet" in "".join(seen), 1.0)
    assert "CPU=64" in "".join(seen)
    t = time.monotonic()
    with pytest.raises(exc.TaskUnschedulableError, match="CPU=64"):
        ray.get(ref, timeout=10)
    assert time.monotonic() - t < 3


def test_calling_remote_function_directly_is_a_type_error(ray):
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)


def test_cancel_pending_and_running(ray):
    blockers = [sleep_then.remote(i, 1.0) for i in range(2)]
    queued = sleep_then.remote("q", 0.0)
    ray.cancel(queued)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(queued, timeout=5)
    running = sleep_then.remote("r", 30)
    ray.get(blockers)
    time.sleep(0.3)
    ray.cancel(running)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(running, timeout=10)


def test_force_cancel_kills_the_worker(ray):
    r = sleep_then.remote("r", 30)
    time.sleep(0.5)
    ray.cancel(r, force=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(r, timeout=10)
    assert ray.get(add.remote(1, 1)) == 2


def test_async_def_remote_functions_run_on_the_worker_loop(ray):
    assert ray.get([async_double.remote(i) for i in range(10)]) == [2 * i for i in range(10)]


def test_worker_crash_is_retried_then_reported(ray):
    @asyncray.remote(max_retries=1)
    def die():
        os._exit(1)

    with pytest.raises(exc.WorkerCrashedError, match="died unexpectedly"):
        ray.get(die.remote(), timeout=30)
    assert ray.get(add.remote(2, 2)) == 4  # the pool replaced the dead worker


def test_crash_once_then_succeed_is_retried(ray, tmp_path):
    marker = tmp_path / "crashed"

    @asyncray.remote
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "ok"

    assert ray.get(crash_once.remote(str(marker)), timeout=30) == "ok"


def test_retry_exceptions(ray, tmp_path):
    counter = tmp_path / "n"
    counter.write_text("0")

    @asyncray.remote(retry_exceptions=[OSError], max_retries=2)
    def flaky(path):
        with open(path) as f:
            n = int(f.read()) + 1
        with open(path, "w") as f:
            f.write(str(n))
        if n < 3:
            raise OSError("flaky")
        return n

    assert ray.get(flaky.remote(str(counter))) == 3


def test_runtime_context(ray):
    @asyncray.remote
    def ctx():
        c = asyncray.get_runtime_context()
        return c.get_node_id(), c.get_task_id(), c.get_actor_id()

    node, task, actor = ray.get(ctx.remote())
    assert node == ray.get_runtime_context().get_node_id()
    assert task is not None and actor is None
    assert ray.get_runtime_context().get_task_id() is None


def test_resources_views(ray):
    total = ray.cluster_resources()
    assert total["CPU"] == 2.0
    assert "object_store_memory" in total
    nodes = ray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert ray.available_resources()["CPU"] <= 2.0


def test_as_completed_yields_in_completion_order(ray):
    refs = [sleep_then.remote(0, 0.5), sleep_then.remote(1, 0.05)]
    assert list(ray.as_completed(refs)) == [refs[1], refs[0]]
    with pytest.raises(exc.GetTimeoutError):
        list(ray.as_completed([sleep_then.remote(0, 3)], timeout=0.1))


def test_ref_future(ray):
    assert add.remote(20, 22).future().result(timeout=10) == 42


def test_worker_print_reaches_the_driver(ray, capfd):
    @asyncray.remote
    def shout():
        print("hello from the worker")
        return os.getpid()

    wpid = ray.get(shout.remote())
    from asyncray._ids import short

    node = short(bytes.fromhex(ray.get_runtime_context().get_node_id()))

    def seen() -> bool:
        out = capfd.readouterr().out
        seen.buf += out  # type: ignore[attr-defined]
        return "hello from the worker" in seen.buf  # type: ignore[attr-defined]

    seen.buf = ""  # type: ignore[attr-defined]
    from conftest import wait_for

    assert wait_for(seen, 5)
    assert f"(shout pid={wpid} node={node}) hello from the worker" in seen.buf  # type: ignore[attr-defined]


def test_a_function_too_large_to_ship_fails_at_the_call_site(ray):
    big = b"x" * (70 * 1024 * 1024)

    @asyncray.remote
    def uses_big():
        return len(big)

    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"uses_big pickles to [\d,]+ bytes, over the [\d,]+-byte limit.*put\(\)"):
        uses_big.remote()
    assert time.monotonic() - t0 < 10
    assert ray.get(add.remote(1, 2)) == 3  # nothing leaked: the runtime goes on


def test_max_calls_replaces_the_worker_after_that_many_calls(ray):
    """As in Ray: a worker runs at most max_calls calls of the function, then a fresh one
    takes over (its resources come back, so the next calls run)."""

    @asyncray.remote(max_calls=2)
    def whose():
        return os.getpid()

    pids = [ray.get(whose.remote(), timeout=30) for _ in range(6)]
    assert all(pids.count(p) <= 2 for p in pids), pids
    assert len(set(pids)) >= 3, pids
    for p in set(pids[:-2]):  # the replaced workers are gone
        assert wait_for(lambda p=p: not is_running(p), 10), p
    burst = ray.get([whose.remote() for _ in range(8)], timeout=60)  # also when submitted at once
    assert all(burst.count(p) <= 2 for p in burst), burst
