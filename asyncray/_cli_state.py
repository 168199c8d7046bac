"""CLI commands that read cluster state and run jobs (SPEC 6, issue "Seeing the cluster").

    asyncray list nodes|workers|tasks|actors|objects|jobs [--filter KEY=VALUE ...] [--format table|json]
    asyncray summary tasks|actors|objects
    asyncray logs WORKER_PID_OR_ID_OR_ACTOR_ID [--grep TEXT] [--tail N]
    asyncray timeline out.json
    asyncray submit [--address A] [--working-dir DIR] [--no-wait] -- python script.py
    asyncray job list|status|logs|stop [JOB_ID]

Each one connects to the head (``--address``, else ``ASYNCRAY_ADDRESS``, else the cluster
started on this machine) with the cluster token and sends ``GetState`` / job messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from asyncray import _session
from asyncray._wire import messages as m

REQUEST_TIMEOUT_S = 15.0
JOB_POLL_INTERVAL_S = 0.2
LIST_KINDS = ("nodes", "workers", "tasks", "actors", "objects", "jobs")


def _print(*args: Any) -> None:
    print(*args)  # noqa: T201 - this module talks to a terminal


class Head:
    """One CLI connection to the head (use with ``async with``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.address = args.address or os.environ.get("ASYNCRAY_ADDRESS") or "auto"
        self.token = _session.resolve_token(args.token)
        self.conn: Any = None

    async def __aenter__(self) -> Head:
        from asyncray._head.locate import locate_head
        from asyncray._wire.connection import connect

        self.address = await locate_head(self.address)
        self.conn = await connect(self.address, None, role="cli", token=self.token, name="cli->head")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.conn.close()

    async def request(self, msg: m.Message) -> Any:
        """Send a request; its Reply value (a remote error raises ``RemoteCallError``)."""
        return await asyncio.wait_for(self.conn.request(msg), REQUEST_TIMEOUT_S)

    async def state(self, kind: str, limit: int = 1000, **args: Any) -> Any:
        """One kind of cluster state (see ``asyncray._head.state_api``)."""
        return await self.request(m.GetState(rid=0, kind=m.StateKind(kind), limit=limit, args=args))


def _run(args: argparse.Namespace, body: Callable[[Head], Any]) -> int:
    """Connect, run ``body``, turn connection failures into one readable line."""
    from asyncray._wire.connection import ConnectionLost, RemoteCallError

    async def main() -> int:
        async with Head(args) as head:
            return int(await body(head) or 0)

    try:
        return asyncio.run(main())
    except (OSError, TimeoutError, ConnectionLost) as exc:
        _print(f"asyncray {args.command}: cannot reach the cluster: {exc or type(exc).__name__} "
               "(is it running? right --address and token?)")
    except RemoteCallError as exc:
        _print(f"asyncray {args.command}: the head said: {exc}")
    return 1


# ---------------------------------------------------------------- output
def _short(v: Any) -> str:
    return str(v)[:8] if v else ""


def _size(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[-1][:80] if text else ""


COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], Any]]]] = {
    "nodes": [("NODE", lambda r: _short(r["node_id"])), ("STATE", lambda r: r["state"]),
              ("HOST", lambda r: r["hostname"]), ("ADDRESS", lambda r: r["address"]),
              ("CPU", lambda r: f"{r['resources'].get('CPU', 0) - r['available'].get('CPU', 0):g}/"
                                f"{r['resources'].get('CPU', 0):g}"),
              ("STORE", lambda r: f"{_size(r['object_store_used'])}/{_size(r['object_store_total'])}"),
              ("WORKERS", lambda r: r["num_workers"])],
    "workers": [("NODE", lambda r: _short(r["node_id"])), ("WORKER", lambda r: r["worker_id"]),
                ("PID", lambda r: r["pid"]), ("STATE", lambda r: r["state"]), ("RUNNING", lambda r: r["current"]),
                ("CPU%", lambda r: f"{r['cpu_percent']:.0f}"), ("RSS", lambda r: _size(r["rss"]))],
    "tasks": [("TASK", lambda r: r["task_id"]), ("NAME", lambda r: r["name"]), ("STATE", lambda r: r["state"]),
              ("PID", lambda r: r["worker_pid"] or ""),
              ("DURATION", lambda r: f"{r['ended_at'] - r['started_at']:.3f}s" if r["ended_at"] and r["started_at"] else ""),
              ("ERROR", lambda r: _first_line(r["error"]))],
    "actors": [("ACTOR", lambda r: r["actor_id"]), ("CLASS", lambda r: r["class_name"]),
               ("NAME", lambda r: r["name"]), ("STATE", lambda r: r["state"]), ("PID", lambda r: r["pid"] or ""),
               ("NODE", lambda r: _short(r["node_id"])), ("RESTARTS", lambda r: r["num_restarts"]),
               ("DEATH CAUSE", lambda r: r["death_cause"])],
    "objects": [("OBJECT", lambda r: r["object_id"]), ("SIZE", lambda r: _size(r["size"])),
                ("NODES", lambda r: ",".join(_short(n) for n in r["nodes"]))],
    "jobs": [("JOB", lambda r: r["job_id"]), ("STATUS", lambda r: r["status"]),
             ("EXIT", lambda r: "" if r["exit_code"] is None else r["exit_code"]),
             ("STARTED", lambda r: time.strftime("%H:%M:%S", time.localtime(r["start_time"]))),
             ("ENTRYPOINT", lambda r: r["entrypoint"])],
}


def format_table(kind: str, rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table with the columns chosen for ``kind``."""
    cols = COLUMNS[kind]
    cells = [[h for h, _ in cols]] + [[str(get(r)) for _, get in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def parse_filters(items: list[str] | None) -> dict[str, str]:
    """``["state=FAILED", "name=f"]`` -> ``{"state": "FAILED", "name": "f"}``.

    Raises:
        ValueError: an item without ``=``.
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    """``asyncray list KIND``."""
    try:
        filters = parse_filters(args.filter)
    except ValueError as exc:
        _print(f"asyncray list: {exc}")
        return 2

    async def body(head: Head) -> int:
        rows = await head.state(args.kind, args.limit, filters=filters)
        _print(json.dumps(rows, indent=2) if args.format == "json" else format_table(args.kind, rows))
        return 0

    return _run(args, body)


def cmd_summary(args: argparse.Namespace) -> int:
    """``asyncray summary tasks|actors|objects``."""

    async def body(head: Head) -> int:
        res = await head.state(f"{args.kind}_summary")
        if args.format == "json":
            _print(json.dumps(res, indent=2))
        elif args.kind == "tasks":
            _print("Tasks by state: " + (", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items())) or "none"))
            for name, per in sorted(res["by_name"].items()):
                _print(f"  {name:<30} " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
        elif args.kind == "actors":
            _print("Actors by state: " + (", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items())) or "none"))
            for cls, per in sorted(res["by_class"].items()):
                _print(f"  {cls:<30} " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
        else:
            _print(f"Objects in shared memory: {res['stored_objects']} ({_size(res['stored_bytes'])})")
            for node, n in sorted(res["bytes_by_node"].items()):
                _print(f"  node {node[:8]}: {_size(n)}")
            for o in res["owners"]:
                _print(f"  {o['role']} pid {o['pid']} owns {o['objects']} object(s)")
        return 0

    return _run(args, body)


def cmd_logs(args: argparse.Namespace) -> int:
    """``asyncray logs WORKER``: a worker's log (by pid, worker id or actor id); none: list the log files."""

    async def body(head: Head) -> int:
        res = await head.state("logs", args.tail, worker=args.worker or "", q=args.grep or "")
        if not args.worker:
            for f in res["files"]:
                _print(f"node {f['node_id'][:8]}  worker {f['worker']}  pid {f['pid'] or '(exited)':<8}  {_size(f['size'])}")
            return 0
        if not res["found"]:
            _print(f"asyncray logs: no log for {args.worker!r}; 'asyncray logs' lists them")
            return 1
        sys.stdout.write("".join(line + "\n" for line in res["lines"]))
        return 0

    return _run(args, body)


def cmd_timeline(args: argparse.Namespace) -> int:
    """``asyncray timeline out.json``: finished tasks as a Chrome trace."""

    async def body(head: Head) -> int:
        events = await head.state("timeline", args.limit)
        with open(args.output, "w") as f:  # noqa: ASYNC230 - a CLI, nothing else runs on this loop
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
        n = sum(1 for e in events if e.get("ph") == "X")
        _print(f"Wrote {n} task(s) to {args.output}; open it in chrome://tracing or https://ui.perfetto.dev")
        return 0

    return _run(args, body)


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


async def _follow(head: Head, job_id: str, offset: int = 0) -> int:
    """Copy the job's output to stdout until it ends; its exit status."""
    out = sys.stdout.buffer
    while True:
        res = await head.state("job_logs", job_id=job_id, offset=offset)
        if res["data"]:
            out.write(res["data"])
            out.flush()
        offset = res["offset"]
        if res["status"] != "RUNNING" and not res["data"]:
            return _exit_status(res["exit_code"])
        if not res["data"]:
            await asyncio.sleep(JOB_POLL_INTERVAL_S)


def cmd_submit(args: argparse.Namespace) -> int:
    """``asyncray submit -- CMD...``: run CMD as a job, stream its output, exit with its status."""
    cmd = list(args.entrypoint)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _print("asyncray submit: give the command after --, e.g. asyncray submit -- python script.py")
        return 2
    working_dir = os.path.abspath(args.working_dir or os.getcwd())

    async def body(head: Head) -> int:
        job_id = await head.request(m.SubmitJob(rid=0, entrypoint=shlex.join(cmd), working_dir=working_dir))
        sys.stderr.write(f"asyncray: job {job_id} submitted\n")
        if args.no_wait:
            _print(job_id)
            return 0
        try:
            return await _follow(head, job_id)
        except asyncio.CancelledError:
            sys.stderr.write(f"\nasyncray: stopped following; the job runs on. Stop it with: asyncray job stop {job_id}\n")
            raise

    try:
        return _run(args, body)
    except KeyboardInterrupt:
        return 130


def cmd_job(args: argparse.Namespace) -> int:
    """``asyncray job list|status|logs|stop``."""
    if args.action != "list" and not args.job_id:
        _print(f"asyncray job {args.action}: give the job id ('asyncray job list' shows them)")
        return 2

    async def body(head: Head) -> int:
        if args.action == "list":
            rows = await head.state("jobs")
            _print(json.dumps(rows, indent=2) if args.format == "json" else format_table("jobs", rows))
        elif args.action == "status":
            job = await head.state("job", job_id=args.job_id)
            _print(json.dumps(job, indent=2) if args.format == "json" else
                   f"{job['job_id']}: {job['status']}" + ("" if job["exit_code"] is None else f" (exit code {job['exit_code']})"))
        elif args.action == "logs":
            if args.follow:
                return await _follow(head, args.job_id)
            res = await head.state("job_logs", job_id=args.job_id, offset=0)
            sys.stdout.buffer.write(res["data"])
            sys.stdout.flush()
        else:
            stopped = await head.request(m.StopJob(rid=0, job_id=args.job_id))
            _print(f"Job {args.job_id} " + ("stopped." if stopped else "was not running."))
        return 0

    try:
        return _run(args, body)
    except KeyboardInterrupt:
        return 130


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="head HOST:PORT (default: ASYNCRAY_ADDRESS, else the cluster started here)")
    p.add_argument("--token", help="cluster token (default: ASYNCRAY_TOKEN, else this machine's token file)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the state and job commands on the ``asyncray`` parser."""
    p = sub.add_parser("list", help="list nodes, workers, tasks, actors, objects or jobs")
    p.add_argument("kind", choices=LIST_KINDS)
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="keep rows where KEY equals VALUE (repeatable)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--limit", type=int, default=1000)
    _connection_flags(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("summary", help="counts of tasks, actors or objects")
    p.add_argument("kind", choices=("tasks", "actors", "objects"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    _connection_flags(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("logs", help="a worker's log (by pid, worker id or actor id); without one, list logs")
    p.add_argument("worker", nargs="?", default="")
    p.add_argument("--grep", help="only lines containing this text")
    p.add_argument("--tail", type=int, default=1000, help="at most this many lines, the last ones")
    _connection_flags(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("timeline", help="write finished tasks as a Chrome trace file")
    p.add_argument("output", help="file to write, e.g. out.json")
    p.add_argument("--limit", type=int, default=100_000)
    _connection_flags(p)
    p.set_defaults(func=cmd_timeline)

    p = sub.add_parser("submit", help="run a command as a job on the cluster; stream its output")
    p.add_argument("--working-dir", help="directory the job runs in (default: the current one)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    _connection_flags(p)
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- python script.py")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("job", help="list jobs, or show the status or logs of one, or stop it")
    p.add_argument("action", choices=("list", "status", "logs", "stop"))
    p.add_argument("job_id", nargs="?")
    p.add_argument("--follow", action="store_true", help="logs: keep streaming until the job ends")
    p.add_argument("--format", choices=("table", "json"), default="table")
    _connection_flags(p)
    p.set_defaults(func=cmd_job)
