"""Pure unit tests for the sans-IO frame codec and the typed messages (STYLE sections 2 and 8).

No loop, no sockets: messages are encoded to bytes and fed back through a FrameDecoder,
the way h11's tests run two codecs back to back.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncray._wire import codec, messages
from asyncray._wire.codec import MAX_FRAME_BYTES, FrameDecoder, encode
from asyncray._wire.messages import Message, ProtocolError

# ---------------------------------------------------------------- building messages from type hints
# Messages are built from each kind's field type hints, so a kind added later is covered
# without touching this file; an unsupported field type fails loudly in _sample.

_SAMPLE_ANY: Any = {"nested": [1, -2, 2.5, "three", b"\x00\xff", None, True, {"k": []}]}
_SAMPLES: dict[Any, Any] = {
    int: 42,
    float: 1.5,
    bool: True,
    str: "caf\u00e9 \u2603",
    bytes: b"\x00\x01id\xff",
    Any: _SAMPLE_ANY,
}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _non_none(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the non-None member carries more information on the wire)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(members) == 1, f"unsupported union field type {tp!r}"
        return members[0]
    return tp


def _sample(tp: Any) -> Any:
    """A plausible msgpack-native value of the field type ``tp``."""
    tp = _non_none(tp)
    if tp in _SAMPLES:
        return _SAMPLES[tp]
    if isinstance(tp, type) and issubclass(tp, messages.Payload):
        return tp(**{name: _sample(t) for name, t in _hints(tp).items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return [_sample(args[0]), _sample(args[0])]
    if origin is dict:
        assert args[0] is str, f"wire maps are str-keyed, got {tp!r}"
        return {"CPU": _sample(args[1]), "GPU": _sample(args[1])}
    raise AssertionError(f"no sample value for field type {tp!r}; extend _SAMPLES")


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    """Hypothesis values of the field type ``tp`` that survive msgpack unchanged."""
    tp_inner = _non_none(tp)
    if tp_inner is int:
        base: st.SearchStrategy[Any] = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    elif tp_inner is float:
        base = st.floats(allow_nan=False)
    elif tp_inner is bool:
        base = st.booleans()
    elif tp_inner is str:
        base = st.text(max_size=20)
    elif tp_inner is bytes:
        base = st.binary(max_size=20)
    elif tp_inner is Any:
        scalars = (
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8) | st.binary(max_size=8)
        )
        base = st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=8,
        )
    elif isinstance(tp_inner, type) and issubclass(tp_inner, messages.Payload):
        base = st.builds(tp_inner, **{name: _strategy(t) for name, t in _hints(tp_inner).items()})
    elif isinstance(tp_inner, type) and issubclass(tp_inner, enum.Enum):
        base = st.sampled_from(list(tp_inner))
    elif typing.get_origin(tp_inner) is list:
        base = st.lists(_strategy(typing.get_args(tp_inner)[0]), max_size=3)
    elif typing.get_origin(tp_inner) is dict:
        base = st.dictionaries(st.text(max_size=5), _strategy(typing.get_args(tp_inner)[1]), max_size=3)
    else:
        raise AssertionError(f"no strategy for field type {tp!r}")
    return base | st.none() if tp_inner is not tp else base


def _build(cls: type[Message]) -> Message:
    return cls(**{name: _sample(tp) for name, tp in _hints(cls).items()})


def _message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(cls, **{name: _strategy(tp) for name, tp in _hints(cls).items()})


ALL_KINDS = sorted(messages.kinds().items())
ANY_MESSAGE = st.one_of([_message_strategy(cls) for _, cls in ALL_KINDS])


def _sample_stream() -> tuple[list[Message], bytes]:
    msgs = [_build(cls) for _, cls in ALL_KINDS]
    return msgs, b"".join(encode(m) for m in msgs)


def _frame(obj: Any) -> bytes:
    """A frame holding any msgpack body, bypassing the typed messages."""
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


# ---------------------------------------------------------------- round trips
def test_registry_is_not_empty_and_kinds_match_classes() -> None:
    kinds = messages.kinds()
    assert len(kinds) >= 20
    for kind, cls in kinds.items():
        assert cls.KIND == kind
        assert issubclass(cls, Message)
        assert cls._FIELDS == tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "cls"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_every_kind_round_trips(kind: str, cls: type[Message]) -> None:
    msg = _build(cls)
    frame = encode(msg)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    body = msgpack.unpackb(frame[4:], raw=False)
    assert body["k"] == kind
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [msg]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("kind", "cls"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_every_kind_round_trips_with_defaults_only(kind: str, cls: type[Message]) -> None:
    """Only the required fields set: the defaults survive the wire too."""
    required = {
        f.name: _sample(_hints(cls)[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    msg = cls(**required)
    assert FrameDecoder().feed(encode(msg)) == [msg]


def test_feed_returns_every_complete_message_in_order() -> None:
    msgs, stream = _sample_stream()
    assert FrameDecoder().feed(stream) == msgs


def test_split_at_every_offset_gives_the_same_messages() -> None:
    msgs, stream = _sample_stream()
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == msgs, f"split at offset {cut}"
        assert decoder.buffered == 0


def test_byte_by_byte_gives_the_same_messages() -> None:
    msgs, stream = _sample_stream()
    decoder = FrameDecoder()
    got: list[Message] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == msgs
    assert decoder.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    msgs, stream = _sample_stream()
    decoder = FrameDecoder()
    half = len(stream) // 2
    assert decoder.feed(bytearray(stream[:half])) + decoder.feed(memoryview(stream)[half:]) == msgs


def test_truncated_frame_is_held_until_complete() -> None:
    msg = messages.Hello(role="driver", token="t", peer_id=b"p")
    frame = encode(msg)
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(b"") == []
    assert decoder.feed(frame[-1:]) == [msg]
    assert decoder.buffered == 0


def test_empty_feed_on_fresh_decoder() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(ANY_MESSAGE, min_size=1, max_size=6), data=st.data())
def test_arbitrary_messages_and_splits_round_trip(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    decoder = FrameDecoder()
    got: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == msgs
    assert decoder.buffered == 0


# ---------------------------------------------------------------- bounds
def test_oversize_declared_length_fails_before_buffering_the_body() -> None:
    decoder = FrameDecoder()
    header = (MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match=f"{MAX_FRAME_BYTES + 1} bytes, over the {MAX_FRAME_BYTES}-byte limit"):
        decoder.feed(header)
    assert decoder.buffered == 0


def test_decoder_is_poisoned_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    good = encode(messages.ReclaimIdle())
    with pytest.raises(ProtocolError, match="close the connection"):
        decoder.feed(good)
    with pytest.raises(ProtocolError, match="close the connection"):
        decoder.feed(b"")
    assert decoder.buffered == 0


def test_custom_limit_accepts_exactly_the_limit_and_rejects_one_more() -> None:
    frame = encode(messages.Hello(role="worker"))
    body_len = len(frame) - 4
    assert FrameDecoder(max_frame_bytes=body_len).feed(frame) == [messages.Hello(role="worker")]
    with pytest.raises(ProtocolError, match="over the"):
        FrameDecoder(max_frame_bytes=body_len - 1).feed(frame[:4])


def test_oversize_header_after_good_frames_in_same_chunk_still_fails() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    chunk = encode(messages.ReclaimIdle()) + (1001).to_bytes(4, "big")
    with pytest.raises(ProtocolError):
        decoder.feed(chunk)


def test_encode_of_oversize_message_raises() -> None:
    msg = messages.Hello(role="x", peer_id=b"\0" * MAX_FRAME_BYTES)
    with pytest.raises(ProtocolError, match=r"Hello frame is \d+ bytes, over the"):
        encode(msg)


def test_encode_limit_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = messages.Hello(role="x", peer_id=b"\0" * 100)
    body_len = len(encode(msg)) - 4
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", body_len)
    assert FrameDecoder(max_frame_bytes=body_len).feed(encode(msg)) == [msg]
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", body_len - 1)
    with pytest.raises(ProtocolError):
        encode(msg)


# ---------------------------------------------------------------- bad bodies
@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(b"\xc1", "undecodable frame body", id="never-used-byte"),
        pytest.param(b"\x92\x01", "undecodable frame body", id="truncated-array"),
        pytest.param(b"\x01\x02", "undecodable frame body", id="trailing-data"),
        pytest.param(msgpack.packb([1, 2]), "frame is a list, expected a map", id="list"),
        pytest.param(msgpack.packb(7), "frame is a int, expected a map", id="int"),
        pytest.param(msgpack.packb(b"x", use_bin_type=True), "frame is a bytes, expected a map", id="bytes"),
        pytest.param(msgpack.packb({"k": "no_such_kind"}), "unknown message kind 'no_such_kind'", id="unknown"),
        pytest.param(msgpack.packb({"role": "driver"}), "unknown message kind None", id="no-kind"),
        pytest.param(msgpack.packb({"k": 5}), "unknown message kind 5", id="int-kind"),
        pytest.param(msgpack.packb({1: "hello"}), "undecodable frame body", id="int-key"),
    ],
)
def test_bad_body_raises_protocol_error(body: bytes, match: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=match):
        decoder.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError):
        decoder.feed(encode(messages.ReclaimIdle()))


def test_missing_field_names_kind_and_field() -> None:
    with pytest.raises(ProtocolError, match=r"bad fields for 'register_worker'.*'pid'"):
        FrameDecoder().feed(_frame({"k": "register_worker", "worker_id": b"w", "address": "a"}))


def test_extra_field_names_kind_and_field() -> None:
    with pytest.raises(ProtocolError, match=r"bad fields for 'hello'.*'bogus'"):
        FrameDecoder().feed(_frame({"k": "hello", "role": "driver", "bogus": 1}))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"k": "register_node", "rid": 1, "node_id": b"n", "address": "a", "resources": {}, "info": None},
         r"field 'info' of 'register_node' is a null"),
        ({"k": "register_node", "rid": "1", "node_id": b"n", "address": "a", "resources": {}},
         r"field 'rid' of 'register_node' is a str"),
        ({"k": "node_resources", "node_id": b"n", "available": {"CPU": "lots"}},
         r"field 'available' of 'node_resources' is a map with a str entry"),
        ({"k": "node_resources", "node_id": "n", "available": {}}, r"field 'node_id' of 'node_resources' is a str"),
        ({"k": "push_task", "task_id": b"t", "fn_id": b"f", "name": "f", "args": [], "kwargs": {},
          "return_ids": [1], "owner": "o"}, r"field 'return_ids' of 'push_task' is a list with a int item"),
        ({"k": "task_done", "task_id": b"t", "results": [], "failed": 1}, r"field 'failed' of 'task_done' is a int"),
        ({"k": "worker_exited", "worker_id": b"w", "exit_code": True}, r"field 'exit_code' of 'worker_exited' is a bool"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_protocol_error(body: dict[str, object], match: str) -> None:
    # Well-formed frames from an authenticated peer can still carry nonsense: the connection
    # that sent it closes (a ProtocolError), nothing downstream sees a wrongly typed field.
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(_frame(body))


def test_fields_of_the_right_type_pass_and_numbers_widen_to_float() -> None:
    [msg] = FrameDecoder().feed(_frame({"k": "node_resources", "node_id": b"n", "available": {"CPU": 2}}))
    assert msg == messages.NodeResources(node_id=b"n", available={"CPU": 2})
    [msg] = FrameDecoder().feed(_frame({"k": "push_task", "task_id": b"t", "fn_id": b"f", "name": "f", "args": [],
                                        "kwargs": {}, "return_ids": [b"r"], "owner": "o", "fn_blob": None}))
    assert isinstance(msg, messages.PushTask) and msg.fn_blob is None


def test_bytes_key_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="bad fields for 'hello'"):
        FrameDecoder().feed(_frame({"k": "hello", b"role": "driver"}))


def test_from_wire_errors_are_protocol_errors_not_key_errors() -> None:
    with pytest.raises(ProtocolError):
        messages.from_wire({"k": "nope"})
    with pytest.raises(ProtocolError):
        messages.from_wire(["hello"])
    with pytest.raises(ProtocolError):
        messages.from_wire({"k": ["unhashable"]})


def test_registering_a_kind_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @messages.message("hello")
        @dataclasses.dataclass(slots=True)
        class Duplicate(Message):
            pass


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=4))
def test_arbitrary_bytes_yield_messages_or_protocol_error(blob: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    bounds = sorted({min(c, len(blob)) for c in cuts})
    try:
        for start, end in zip([0, *bounds], [*bounds, len(blob)], strict=True):
            for msg in decoder.feed(blob[start:end]):
                assert isinstance(msg, Message)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decoder.feed(b"")


@settings(max_examples=300, deadline=None)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6) | st.binary(max_size=6),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["k", "rid", "role", "worker_id", "x"]) | st.text(max_size=4), inner, max_size=4
            )
        ),
        max_leaves=10,
    )
)
def test_arbitrary_msgpack_bodies_yield_messages_or_protocol_error(body: Any) -> None:
    try:
        out = FrameDecoder().feed(_frame(body))
    except ProtocolError:
        return
    assert len(out) == 1 and isinstance(out[0], Message)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from([k for k, _ in ALL_KINDS]),
    extra=st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), max_size=3),
)
def test_known_kind_with_arbitrary_fields_yields_message_or_protocol_error(kind: str, extra: dict[str, int]) -> None:
    try:
        out = FrameDecoder().feed(_frame({**extra, "k": kind}))
    except ProtocolError:
        return
    assert type(out[0]) is messages.kinds()[kind]


# ---------------------------------------------------------------- purity
_WIRE_DIR = Path(codec.__file__).parent
_FORBIDDEN = {"asyncio", "socket"}


@pytest.mark.parametrize("name", ["codec.py", "messages.py"])
def test_codec_and_messages_do_not_import_io(name: str) -> None:
    tree = ast.parse((_WIRE_DIR / name).read_text(), filename=name)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    roots = {mod.split(".")[0] for mod in imported}
    assert not roots & _FORBIDDEN, f"{name} imports {sorted(roots & _FORBIDDEN)}"
    # Whatever else of asyncray they import must be one of the two pure modules.
    internal = {mod for mod in imported if mod.split(".")[0] == "asyncray"}
    assert internal <= {"asyncray._wire.messages", "asyncray._wire.codec"}, internal
