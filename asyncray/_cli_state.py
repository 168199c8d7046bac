"""CLI commands that read cluster state (list, summary, logs, timeline, jobs): filled in by the
dashboard work; kept separate so the cluster lifecycle commands stay small."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the state commands on the ``asyncray`` parser."""
    return None
