"""The actor mailbox without sockets: each caller's calls leave in that caller's order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncray._wire import messages as m
from asyncray._worker.mailbox import Envelope, Mailbox


def call(caller: bytes, seq: int) -> Envelope:
    msg = m.PushTask(task_id=caller + bytes([seq]), fn_id=b"", name="A.f", args=[], kwargs={}, return_ids=[b"r"],
                     owner="", seq=seq, caller=caller)
    return Envelope(msg, reply_to=None)


def seqs(envelopes: list[Envelope]) -> list[tuple[bytes, int]]:
    return [(e.caller, e.seq) for e in envelopes]


def test_ready_calls_leave_at_once_in_order():
    box = Mailbox()
    assert seqs(box.put(call(b"a", 0))) == [(b"a", 0)]
    assert seqs(box.put(call(b"a", 1))) == [(b"a", 1)]
    assert len(box) == 2  # both running
    box.finished()
    box.finished()
    assert len(box) == 0


def test_a_call_waiting_for_its_arguments_holds_back_later_calls_of_its_caller_only():
    box = Mailbox()
    slow = call(b"a", 0)
    slow.ready = False
    assert box.put(slow) == []
    assert box.put(call(b"a", 1)) == []  # behind the call still fetching its arguments
    assert seqs(box.put(call(b"b", 0))) == [(b"b", 0)]  # another caller is not held up
    assert len(box) == 3
    assert seqs(box.made_ready(slow)) == [(b"a", 0), (b"a", 1)]


def test_gaps_in_sequence_numbers_do_not_block():
    # A caller skips numbers of calls cancelled before they left: they never arrive.
    box = Mailbox()
    assert seqs(box.put(call(b"a", 3))) == [(b"a", 3)]
    assert seqs(box.put(call(b"a", 7))) == [(b"a", 7)]


def test_a_dropped_waiting_call_releases_the_calls_behind_it():
    box = Mailbox()
    slow = call(b"a", 0)
    slow.ready = False
    box.put(slow)
    box.put(call(b"a", 1))
    assert seqs(box.drop(slow)) == [(b"a", 1)]


@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.booleans()), max_size=40), st.randoms())
def test_each_callers_calls_leave_in_sequence_order(arrivals, rnd):
    box = Mailbox()
    counters: dict[bytes, int] = {}
    waiting: list[Envelope] = []
    out: list[Envelope] = []
    for caller, slow in arrivals:
        seq = counters.get(caller, 0)
        counters[caller] = seq + 1
        env = call(caller, seq)
        env.ready = not slow
        if slow:
            waiting.append(env)
        out += box.put(env)
        if waiting and rnd.random() < 0.3:
            out += box.made_ready(waiting.pop(rnd.randrange(len(waiting))))
    rnd.shuffle(waiting)
    for env in waiting:
        out += box.made_ready(env)
    assert len(out) == len(arrivals)  # everything ran once
    for caller, count in counters.items():
        mine = [e.seq for e in out if e.caller == caller]
        assert mine == sorted(mine) == list(range(count))
    assert len(box) == len(arrivals)
