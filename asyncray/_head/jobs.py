"""Jobs: driver scripts the head runs for ``asyncray submit`` (SPEC 6).

A job is a shell command started by the head as a subprocess in its own session, with
``ASYNCRAY_ADDRESS`` and ``ASYNCRAY_TOKEN`` pointing back at the head, so ``init()`` inside
the script joins this cluster. Its stdout and stderr go to one file that the CLI reads
from an offset to stream the output back.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

from asyncray import _session

log = logging.getLogger(__name__)

# How long a stopped job gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 3.0
# At most this many bytes of a job's log go back in one answer.
MAX_LOG_CHUNK_BYTES = 256 * 1024


class JobStatus(enum.Enum):
    """Life of a job."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


@dataclass
class JobRecord:
    """One submitted job."""

    job_id: str
    entrypoint: str
    working_dir: str
    log_path: str
    status: JobStatus = JobStatus.RUNNING
    pid: int = 0
    exit_code: int | None = None
    start_time: float = 0.0
    end_time: float | None = None
    stop_requested: bool = False

    def entry(self) -> dict[str, Any]:
        """The msgpack-able view callers get."""
        return {
            "job_id": self.job_id, "entrypoint": self.entrypoint, "working_dir": self.working_dir,
            "status": self.status.value, "pid": self.pid, "exit_code": self.exit_code,
            "start_time": self.start_time, "end_time": self.end_time,
        }


class JobManager:
    """Starts, watches, stops and reports jobs; owned by the head service."""

    def __init__(self, head: Any) -> None:
        self.head = head
        self.jobs: dict[str, JobRecord] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self.log_dir = os.path.join(_session.ensure_sessions_dir(), f"jobs-{os.getpid()}-{secrets.token_hex(3)}")

    async def submit(self, entrypoint: str, working_dir: str = "", env: dict[str, str] | None = None) -> str:
        """Start a job; returns its id.

        Raises:
            ValueError: the entrypoint is empty or the working directory does not exist.
        """
        if not entrypoint.strip():
            raise ValueError("the job has no entrypoint; e.g. asyncray submit -- python script.py")
        cwd = working_dir or os.getcwd()
        job_id = f"job_{secrets.token_hex(4)}"
        _check_dirs(cwd, self.log_dir)
        rec = JobRecord(job_id, entrypoint, cwd, os.path.join(self.log_dir, f"{job_id}.log"), start_time=time.time())
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.update(
            ASYNCRAY_ADDRESS=self.head.address, ASYNCRAY_TOKEN=self.head.token, ASYNCRAY_JOB_ID=job_id,
            PYTHONUNBUFFERED="1",
        )
        with _open_log(rec.log_path) as out:
            proc = await asyncio.create_subprocess_shell(
                entrypoint, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd, env=full_env,
                start_new_session=True,
            )
        rec.pid = proc.pid
        self.jobs[job_id] = rec
        self._procs[job_id] = proc
        self.head.spawn(self._watch(rec, proc), f"watch-{job_id}")
        log.info("job %s started (pid %d): %s", job_id, proc.pid, entrypoint)
        return job_id

    async def _watch(self, rec: JobRecord, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._procs.pop(rec.job_id, None)
        rec.exit_code = code
        rec.end_time = time.time()
        if rec.stop_requested:
            rec.status = JobStatus.STOPPED
        else:
            rec.status = JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED

    async def stop_job(self, job_id: str) -> bool:
        """Stop a job's process group; True if it was running.

        Raises:
            KeyError: no such job.
        """
        rec = self.jobs[job_id]
        proc = self._procs.get(job_id)
        if proc is None or proc.returncode is not None:
            return False
        rec.stop_requested = True
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        return [r.entry() for r in sorted(self.jobs.values(), key=lambda r: r.start_time, reverse=True)]

    def get(self, job_id: str) -> dict[str, Any]:
        """One job's entry.

        Raises:
            KeyError: no such job.
        """
        return self.jobs[job_id].entry()

    def read_log(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        """The job's output from byte ``offset`` (at most MAX_LOG_CHUNK_BYTES) and its status.

        Raises:
            KeyError: no such job.
        """
        rec = self.jobs[job_id]
        try:
            with open(rec.log_path, "rb") as f:
                f.seek(max(0, offset))
                data = f.read(MAX_LOG_CHUNK_BYTES)
        except FileNotFoundError:
            data = b""
        return {"data": data, "offset": max(0, offset) + len(data), **rec.entry()}

    async def stop(self) -> None:
        """End every running job and remove the job logs (the head is going away)."""
        for job_id in list(self._procs):
            try:
                await self.stop_job(job_id)
            except (KeyError, ProcessLookupError):
                pass
        shutil.rmtree(self.log_dir, ignore_errors=True)


def _check_dirs(cwd: str, log_dir: str) -> None:
    """Local, quick file-system steps (they do not block the loop noticeably)."""
    if not os.path.isdir(cwd):
        raise ValueError(f"working directory {cwd!r} does not exist on the head's machine")
    os.makedirs(log_dir, exist_ok=True)


def _open_log(path: str) -> Any:
    return open(path, "ab")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the job leads its own session: its children go too
    except (ProcessLookupError, PermissionError):
        pass
