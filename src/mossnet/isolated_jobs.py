"""Isolated jobs: one command per child process, so that a crash, an out-of-memory kill or a
device fault ends that job only, and peak memories of two jobs never mix.

Used by ``mossnet bench`` (one worker per model or prompt length), ``mossnet compare`` (a pool
of study runs, each with its own log) and the benchmark scripts.

* :func:`run_job` runs one command to its end, or until its timeout (then it is killed), and
  returns a :class:`JobResult`: exit status, captured output (or a log file), seconds, and
  :meth:`JobResult.failure`, one line saying why it failed.
* :func:`run_in_parallel` keeps up to N jobs running at once, in order, and reports each as it
  ends. If it is left by an exception (a failing callback, Ctrl-C, or SIGTERM, which it turns
  into ``SystemExit`` while it runs in the main thread), it kills the jobs still running first:
  a killed ``mossnet compare`` leaves no orphan runs holding the GPU.
* A child hands results back as ``RESULT {json}`` lines on stdout (:func:`emit_result`), which
  the parent reads with :func:`read_results`; anything else the child prints is left alone.

The standard library's ``subprocess`` does the process work; this module only fixes, once,
what every caller needs on top of it: the kill on timeout, the log file, the failure line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

RESULT_PREFIX = "RESULT "
POLL_SECONDS = 0.5  # how often run_in_parallel looks for finished jobs
KILL_GRACE_SECONDS = 5.0  # how long a job stopped by run_in_parallel has between SIGTERM and SIGKILL


def python_module_command(module: str, *argv: str) -> list[str]:
    """The command line that runs ``python -m module argv...`` with this interpreter."""
    return [sys.executable, "-m", module, *argv]


def emit_result(row: dict) -> None:
    """In a child: hand one JSON-able row to the parent process."""
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def read_results(stdout: str) -> list[dict]:
    """In the parent: the rows a child handed over, in order."""
    return [json.loads(line[len(RESULT_PREFIX):]) for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]


@dataclass(frozen=True)
class JobResult:
    """How a job ended. ``stdout``/``stderr`` are empty unless its output was captured;
    ``timeout`` is the limit it was killed at, None when it ended by itself."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.timeout is None and self.returncode == 0

    def failure(self) -> str | None:
        """One line on why the job failed (None when it did not): the timeout, a kill by a
        signal (137 is the shell's spelling of SIGKILL, which the out-of-memory killer sends),
        or the exit status with the last three lines of stderr."""
        if self.timeout is not None:
            return f"timeout after {self.timeout}s"
        if self.returncode == 0:
            return None
        if self.returncode < 0 or self.returncode == 137:
            return f"killed (signal {-self.returncode if self.returncode < 0 else 9}; out of memory?)"
        tail = (self.stderr or "").strip().splitlines()[-3:]
        return f"exit {self.returncode}: " + " | ".join(tail)


class Job:
    """A started child process. Its output is appended to ``log`` (stderr merged into it) when
    one is given, else captured as text, or with ``capture=False`` left on this process's
    terminal. ``env`` replaces the environment (None: inherit this one)."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, log: str | Path | None = None,
                 capture: bool = True):
        self.cmd = list(cmd)
        self.started = time.perf_counter()
        self._log = open(log, "a") if log is not None else None
        if self._log is not None:
            out, err = self._log, subprocess.STDOUT
        else:
            out = err = subprocess.PIPE if capture else None
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, text=True,
                                         env=dict(env) if env is not None else None)
        except BaseException:
            self._close()
            raise

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> JobResult:
        """Wait for the end, killing the job after ``timeout`` seconds (None: no limit)."""
        killed_at = None
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            killed_at = timeout
        finally:
            self._close()
        return JobResult(self.proc.returncode, out or "", err or "", time.perf_counter() - self.started, killed_at)

    def terminate(self) -> None:
        """Send SIGTERM unless the job has already ended (then: nothing)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def reap(self, deadline: float) -> None:
        """After :meth:`terminate`: wait until ``deadline`` (a ``time.monotonic()`` value) for
        the end, then SIGKILL and wait; close the log and the pipes. Output is dropped."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()


def run_job(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            log: str | Path | None = None, capture: bool = True) -> JobResult:
    """Run ``cmd`` in a child process to its end, or kill it after ``timeout`` seconds (output:
    as :class:`Job` says)."""
    return Job(cmd, env=env, log=log, capture=capture).wait(timeout)


def run_in_parallel(starters: Sequence[Callable[[], Job]], parallel: int,
                    on_end: Callable[[int, JobResult], None]) -> None:
    """Start the jobs in order (``starters[i]()`` starts job i), at most ``parallel`` at once,
    and call ``on_end(i, result)`` as each one ends. Returns when all have ended.

    Any exception that leaves it (from a starter, from ``on_end``, ``KeyboardInterrupt``,
    ``SystemExit``) first stops every job still running: SIGTERM, then SIGKILL to those still
    alive after ``KILL_GRACE_SECONDS``, and a wait for each, logs closed; then it propagates.
    Called from the main thread, it turns SIGTERM into ``SystemExit(143)`` while it runs, so a
    parent killed with SIGTERM stops its jobs too; the previous SIGTERM handler is back when it
    returns or raises."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if in_main_thread:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    queue = list(enumerate(starters))
    # every job started and not yet handed to on_end; a job leaves it only after on_end returned
    running: list[tuple[int, Job]] = []
    try:
        while queue or running:
            while queue and len(running) < max(1, parallel):
                index, start = queue.pop(0)
                running.append((index, start()))
            time.sleep(POLL_SECONDS)
            for entry in list(running):
                index, job = entry
                if job.finished():
                    on_end(index, job.wait())
                    running.remove(entry)
    except BaseException:
        _stop_jobs([job for _, job in running], in_main_thread)
        raise
    finally:
        if in_main_thread:
            # None: the handler was not set from Python; the default is the nearest we can restore
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _stop_jobs(jobs: Sequence[Job], in_main_thread: bool) -> None:
    """Kill and reap ``jobs`` (see run_in_parallel). In the main thread, SIGTERM and SIGINT are
    ignored meanwhile: a second signal (a process-group kill, a second Ctrl-C) must not cut the
    cleanup short and leave orphans; it lasts at most the grace period and a SIGKILL."""
    shielded = {}
    if in_main_thread:
        for signum in (signal.SIGTERM, signal.SIGINT):
            shielded[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        for job in jobs:
            job.terminate()
        deadline = time.monotonic() + KILL_GRACE_SECONDS  # one grace period for all, not one each
        for job in jobs:
            job.reap(deadline)
    finally:
        for signum, handler in shielded.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
