"""Ray's call semantics at the call site: argument binding, option and decorator validation.

Calls that cannot bind fail at ``.remote()`` with the TypeError a local call gives; bad options
fail when decorating (or at ``.options()``) with Ray's exception types: an unknown name or a bad
value is a ValueError, a value of the wrong type a TypeError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import asyncray
from asyncray._client import task_spec

# ---------------------------------------------------------------- functions under test


def positional(a, b):
    return a + b


def defaults(a, b=2, *, c=3):
    return a, b, c


def star_then_named(*args, y=1):
    return args, y


def star_then_required(*args, y):
    return args, y


def keyword_only(a, *, k):
    return a, k


def positional_only(a, /, b=0):
    return a, b


def everything(a, /, b, *args, c, d=4, **kw):
    return a, b, args, c, d, kw


def non_ascii_body():
    # commentaire: ça marche ✓
    héllo = "héllo ✓"
    return héllo


async def async_star_then_named(*args, y=1):
    return args, y


remote_positional = asyncray.remote(positional)
remote_defaults = asyncray.remote(defaults)
remote_star_then_named = asyncray.remote(star_then_named)
remote_star_then_required = asyncray.remote(star_then_required)
remote_keyword_only = asyncray.remote(keyword_only)
remote_positional_only = asyncray.remote(positional_only)
remote_everything = asyncray.remote(everything)
remote_non_ascii_body = asyncray.remote(non_ascii_body)
remote_async_star = asyncray.remote(async_star_then_named)


class Account:
    def __init__(self, owner, *, balance=0):
        self.owner = owner
        self.balance = balance

    def deposit(self, amount, *notes, memo=""):
        self.balance += amount
        return self.balance, notes, memo

    def greet(self):
        return f"héllo {self.owner} ✓"

    @staticmethod
    def fee(amount):
        return amount // 100

    @classmethod
    def kind(cls, verbose=False):
        return cls.__name__

    @asyncray.method(num_returns=2, concurrency_group="io", max_task_retries=2)
    def split(self):
        return self.owner, self.balance


class Plain:
    def ping(self):
        return "pong"


RemoteAccount = asyncray.remote(concurrency_groups={"io": 2})(Account)
RemotePlain = asyncray.remote(Plain)


@asyncray.remote
def call_method_badly(handle):
    """In a worker: the handle's metadata carries the method's parameters."""
    try:
        handle.deposit.remote()
    except TypeError as exc:
        return str(exc)
    return "no error"


def local_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the TypeError a local call raises."""
    with pytest.raises(TypeError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- 1. binding at .remote()

BAD_CALLS = [
    pytest.param(positional, (1,), {}, id="missing"),
    pytest.param(positional, (1, 2, 3), {}, id="extra-positional"),
    pytest.param(positional, (1, 2), {"z": 3}, id="unknown-keyword"),
    pytest.param(positional, (1,), {"a": 2}, id="multiple-values"),
    pytest.param(defaults, (), {"b": 1}, id="missing-with-defaults"),
    pytest.param(defaults, (1, 2, 3), {}, id="keyword-only-given-positionally"),
    pytest.param(keyword_only, (1,), {}, id="keyword-only-missing"),
    pytest.param(star_then_named, (1,), {"z": 2}, id="star-then-unknown-keyword"),
    pytest.param(star_then_required, (1, 2), {}, id="star-then-required-missing"),
    pytest.param(positional_only, (), {"a": 1}, id="positional-only-by-keyword"),
    pytest.param(everything, (1, 2), {}, id="everything-missing-keyword-only"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), BAD_CALLS)
def test_a_call_that_does_not_bind_raises_the_local_type_error_at_remote(ray, fn, args, kwargs):
    remote_fn = asyncray.remote(fn)
    expected = local_error(fn, *args, **kwargs)
    with pytest.raises(TypeError) as info:
        remote_fn.remote(*args, **kwargs)
    assert str(info.value) == expected
    with pytest.raises(TypeError) as info:
        remote_fn.options(num_cpus=1).remote(*args, **kwargs)
    assert str(info.value) == expected


def test_binding_is_checked_before_init(ray, monkeypatch):
    # The check needs no runtime: the same error whether or not one is running (and a call
    # that cannot bind does not start one: auto-init comes after the check).
    asyncray.shutdown()
    monkeypatch.setenv("ASYNCRAY_AUTO_INIT", "0")
    try:
        with pytest.raises(TypeError, match=r"positional\(\) missing 1 required positional argument: 'b'"):
            remote_positional.remote(1)
        assert not asyncray.is_initialized()
        with pytest.raises(RuntimeError, match="init"):
            remote_positional.remote(1, 2)
    finally:
        asyncray.init(num_cpus=2)


def test_calls_that_bind_run_as_they_would_locally(ray):
    refs = [
        remote_defaults.remote(1),
        remote_defaults.remote(1, 5, c=6),
        remote_keyword_only.remote(1, k=2),
        remote_positional_only.remote(1, b=2),
        remote_everything.remote(1, 2, 3, c=5, e=6),
        remote_everything.remote(1, b=2, c=3),
    ]
    assert asyncray.get(refs, timeout=15) == [
        (1, 2, 3), (1, 5, 6), (1, 2), (1, 2), (1, 2, (3,), 5, 4, {"e": 6}), (1, 2, (), 3, 4, {}),
    ]


def test_object_refs_bind_like_any_value(ray):
    a, b = asyncray.put(1), asyncray.put(2)
    assert asyncray.get(remote_positional.remote(a, b=b), timeout=15) == 3
    with pytest.raises(TypeError, match=r"positional\(\) missing 1 required positional argument: 'b'"):
        remote_positional.remote(a)


def test_a_wrapper_is_checked_as_a_local_call_would_be(ray):
    # functools.wraps sets __wrapped__, but a local call binds to the wrapper's own parameters.
    import functools

    def injecting(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, b=10, **kwargs)

        return wrapper

    assert asyncray.get(asyncray.remote(injecting(positional)).remote(1), timeout=15) == 11


@pytest.mark.timeout(20)
def test_star_args_then_named_parameters_run(ray):
    # Once reported to hang until the 60 s timeout.
    assert asyncray.get(remote_star_then_named.remote(1, 2, y=3), timeout=15) == ((1, 2), 3)
    assert asyncray.get(remote_star_then_named.remote(), timeout=15) == ((), 1)
    assert asyncray.get(remote_star_then_required.remote(1, y=2), timeout=15) == ((1,), 2)
    assert asyncray.get(remote_async_star.remote(1, 2, y=3), timeout=15) == ((1, 2), 3)

    @asyncray.remote
    def local_star(*args, y=1):  # pickled by value, not by reference
        return sum(args) * y

    assert asyncray.get(local_star.remote(1, 2, y=3), timeout=15) == 9


@pytest.mark.timeout(20)
def test_non_ascii_source_runs(ray):
    # Once reported to hang until the 60 s timeout.
    assert asyncray.get(remote_non_ascii_body.remote(), timeout=15) == "héllo ✓"

    @asyncray.remote
    def local_non_ascii(x):  # by value: its code object travels
        größe = "größe ✓ " + x  # ✓
        return größe

    assert asyncray.get(local_non_ascii.remote("日本"), timeout=15) == "größe ✓ 日本"

    @asyncray.remote
    def raises_non_ascii():
        raise ValueError("échec ✗")

    with pytest.raises(ValueError, match="échec ✗") as info:
        asyncray.get(raises_non_ascii.remote(), timeout=15)
    assert "raises_non_ascii" in str(info.value)


# ---------------------------------------------------------------- actors


def test_actor_constructor_arguments_are_bound_at_remote(ray):
    for args, kwargs in [((), {}), ((1, 2), {}), (("ann",), {"limit": 3})]:
        expected = local_error(Account, *args, **kwargs)
        with pytest.raises(TypeError) as info:
            RemoteAccount.remote(*args, **kwargs)
        assert str(info.value) == expected
        with pytest.raises(TypeError) as info:
            RemoteAccount.options(max_restarts=1).remote(*args, **kwargs)
        assert str(info.value) == expected
    with pytest.raises(TypeError, match=r"^Plain\(\) takes no arguments$"):
        RemotePlain.remote(1)
    a = RemoteAccount.remote("ann", balance=5)
    assert asyncray.get(a.deposit.remote(1, "x", memo="m"), timeout=15) == (6, ("x",), "m")


def test_actor_method_arguments_are_bound_at_remote(ray):
    a = RemoteAccount.remote("bob")
    local = Account("bob")
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("deposit", (), {}),
        ("deposit", (1,), {"note": "x"}),
        ("greet", (1,), {}),
        ("fee", (), {}),
        ("fee", (1, 2), {}),
        ("kind", (1, 2), {}),
    ]
    for name, args, kwargs in cases:
        expected = local_error(getattr(local, name), *args, **kwargs)
        with pytest.raises(TypeError) as info:
            getattr(a, name).remote(*args, **kwargs)
        assert str(info.value) == expected, name
        with pytest.raises(TypeError) as info:
            getattr(a, name).options(name="call").remote(*args, **kwargs)
        assert str(info.value) == expected, name
    assert asyncray.get([a.fee.remote(250), a.kind.remote(verbose=True), a.greet.remote()], timeout=15) == [
        2, "Account", "héllo bob ✓",
    ]


def test_handles_elsewhere_check_calls_too(ray):
    a = RemoteAccount.options(name="binding-checks").remote("cy")
    expected = local_error(Account("cy").deposit)
    # a handle that travelled to a worker, and one looked up by name through the head
    assert asyncray.get(call_method_badly.remote(a), timeout=15) == expected
    found = asyncray.get_actor("binding-checks")
    with pytest.raises(TypeError) as info:
        found.deposit.remote()
    assert str(info.value) == expected
    asyncray.kill(a)


# ---------------------------------------------------------------- 3. options and decorators

TASK_OPTION_ERRORS = [
    ("num_cpu", 1, ValueError, r"unknown option 'num_cpu' for (@asyncray.remote|remote function positional) \(did you mean 'num_cpus'\?\)"),
    ("max_restarts", 1, ValueError, r"'max_restarts' .*applies to actor classes only"),
    ("num_cpus", "x", TypeError, r"num_cpus must be a number \(int or float\) .*got str 'x'"),
    ("num_cpus", -1, ValueError, r"num_cpus must be a number >= 0"),
    ("num_gpus", float("nan"), ValueError, r"num_gpus must be a number >= 0"),
    ("memory", True, TypeError, r"memory must be a number"),
    ("resources", {"foo": -2}, ValueError, r"resource 'foo' must be a number >= 0"),
    ("resources", {"foo": "1"}, TypeError, r"resource 'foo' must be a number"),
    ("resources", [("foo", 1)], TypeError, r"resources must be a dict"),
    ("resources", {"CPU": 1}, ValueError, r"use num_cpus/num_gpus"),
    ("num_returns", -1, ValueError, r"num_returns must be an int >= 0"),
    ("num_returns", 1.5, ValueError, r"The keyword 'num_returns' only accepts 0 or a positive integer"),
    ("num_returns", "streaming", ValueError, r"num_returns='streaming' .*not supported"),
    ("max_retries", -2, ValueError, r"max_retries must be an int >= -1"),
    ("max_retries", "3", TypeError, r"max_retries must be an int"),
    ("max_calls", -1, ValueError, r"max_calls must be an int >= 0"),
    ("retry_exceptions", "yes", TypeError, r"retry_exceptions must be a bool or a list"),
    ("retry_exceptions", [KeyError, "x"], TypeError, r"retry_exceptions must list exception classes"),
    ("scheduling_strategy", "PACK", ValueError, r"scheduling_strategy must be 'DEFAULT' or 'SPREAD'"),
    ("scheduling_strategy", 3, TypeError, r"scheduling_strategy must be"),
    ("name", 3, TypeError, r"name must be a str"),
    ("runtime_env", "env", TypeError, r"runtime_env must be a dict"),
]


@pytest.mark.parametrize(("option", "value", "error", "message"), TASK_OPTION_ERRORS)
def test_bad_task_options_fail_at_decoration_and_at_options(option, value, error, message):
    with pytest.raises(error, match=message):
        asyncray.remote(**{option: value})(positional)
    with pytest.raises(error, match=message):
        remote_positional.options(**{option: value})


ACTOR_OPTION_ERRORS = [
    ("max_calls", 1, ValueError, r"unknown option 'max_calls' for actor class Plain \(max_calls applies to remote functions only\)"),
    ("max_retries", 1, ValueError, r"max_retries applies to remote functions only"),
    ("num_cpus", "x", TypeError, r"num_cpus must be a number"),
    ("max_restarts", -2, ValueError, r"max_restarts must be an int >= -1"),
    ("max_task_retries", 1.0, ValueError, r"The keyword 'max_task_retries' only accepts -1, 0 or a positive integer"),
    ("max_concurrency", 0, ValueError, r"max_concurrency must be an int >= 1"),
    ("lifetime", "forever", ValueError, r"lifetime must be 'detached' or 'non_detached'"),
    ("lifetime", True, TypeError, r"lifetime must be"),
    ("namespace", "", ValueError, r"namespace must not be empty"),
    ("namespace", 1, TypeError, r"namespace must be a str"),
    ("get_if_exists", 1, TypeError, r"get_if_exists must be a bool"),
    ("name", b"x", TypeError, r"name must be a str"),
]


@pytest.mark.parametrize(("option", "value", "error", "message"), ACTOR_OPTION_ERRORS)
def test_bad_actor_options_fail_at_decoration_and_at_options(option, value, error, message):
    with pytest.raises(error, match=message):
        asyncray.remote(**{option: value})(Plain)
    with pytest.raises(error, match=message):
        RemotePlain.options(**{option: value})


def test_remote_applied_to_the_wrong_thing():
    with pytest.raises(TypeError, match=r"must be applied to a function or a class, got int"):
        asyncray.remote(3)
    with pytest.raises(TypeError, match=r"must be applied to a function or a class, got str"):
        asyncray.remote(num_cpus=1)("f")
    with pytest.raises(TypeError, match=r"takes either a function or class alone .* got 1 positional argument\(s\) and options \['num_cpus'\]"):
        asyncray.remote(positional, num_cpus=1)
    with pytest.raises(TypeError, match=r"got 2 positional argument\(s\)"):
        asyncray.remote(positional, defaults)
    with pytest.raises(TypeError, match=r"positional is already remote"):
        asyncray.remote(remote_positional)
    with pytest.raises(TypeError, match=r"Plain is already remote"):
        asyncray.remote(num_cpus=1)(RemotePlain)
    # unknown names fail before anything is decorated
    with pytest.raises(ValueError, match=r"unknown option 'num_cpu' for @asyncray.remote"):
        asyncray.remote(num_cpu=1)


def test_remote_functions_and_actor_classes_reject_direct_calls():
    with pytest.raises(TypeError, match=r"positional\.remote"):
        remote_positional(1, 2)
    with pytest.raises(TypeError, match=r"Plain\.remote"):
        RemotePlain()


def test_method_options_are_validated_at_decoration():
    with pytest.raises(ValueError, match=r"unknown option 'num_return' for @asyncray.method \(did you mean 'num_returns'\?\)"):
        asyncray.method(num_return=2)
    with pytest.raises(ValueError, match=r"unknown option 'max_restarts' for @asyncray.method"):
        asyncray.method(max_restarts=2)
    with pytest.raises(ValueError, match=r"num_returns must be an int >= 0"):
        asyncray.method(num_returns=-1)
    with pytest.raises(ValueError, match=r"num_returns must be an int"):  # a number, not an int: Ray's ValueError
        asyncray.method(num_returns=2.0)
    with pytest.raises(ValueError, match=r"num_returns='dynamic' .*not supported"):
        asyncray.method(num_returns="dynamic")
    with pytest.raises(TypeError, match=r"concurrency_group must be a str"):
        asyncray.method(concurrency_group=1)
    with pytest.raises(ValueError, match=r"max_task_retries must be an int >= -1"):
        asyncray.method(max_task_retries=-5)
    with pytest.raises(TypeError, match=r"retry_exceptions must be a bool or a list"):
        asyncray.method(retry_exceptions="always")
    with pytest.raises(TypeError, match=r"takes only keyword options"):
        asyncray.method(3)
    with pytest.raises(TypeError, match=r"must be applied to a method, got int"):
        asyncray.method(num_returns=1)(3)

    def bare(self):
        return 1

    assert asyncray.method(bare) is bare  # bare @asyncray.method: nothing to set


def test_method_options_are_honoured(ray):
    a = RemoteAccount.remote("dee", balance=7)
    refs = a.split.remote()
    assert isinstance(refs, tuple) and len(refs) == 2
    assert asyncray.get(list(refs), timeout=15) == ["dee", 7]
    info = a._meta["methods"]["split"]
    assert info["concurrency_group"] == "io"  # metadata for the concurrency groups
    assert info["max_task_retries"] == 2
    assert Account.split.__asyncray_method_options__ == {
        "num_returns": 2, "concurrency_group": "io", "max_task_retries": 2,
    }
    with pytest.raises(ValueError, match=r"unknown option 'num_cpus' for actor method deposit"):
        a.deposit.options(num_cpus=1)
    one = a.split.options(num_returns=1).remote()
    assert asyncray.get(one, timeout=15) == ("dee", 7)


def test_an_actor_class_too_large_to_ship_fails_at_remote(ray, monkeypatch):
    monkeypatch.setattr(task_spec, "MAX_FUNCTION_BYTES", 50_000)
    big = b"x" * 100_000

    @asyncray.remote
    class Heavy:
        def size(self):
            return len(big)

    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"actor class Heavy pickles to [\d,]+ bytes, over the 50,000-byte limit"):
        Heavy.remote()
    assert time.monotonic() - t0 < 10
    assert asyncray.get(remote_positional.remote(1, 2), timeout=15) == 3  # the runtime goes on
