"""Cluster tokens are safe to pass on a command line."""

from __future__ import annotations

from asyncray import _session


def test_a_new_token_never_reads_as_a_command_line_option() -> None:
    # `asyncray start --address ... --token <token>`: a token starting with "-" made argparse
    # take it for an option (seen as a rare failure of the network-namespace test).
    tokens = {_session.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert not [t for t in tokens if t.startswith("-")]
    assert all(len(t) >= 64 for t in tokens)
