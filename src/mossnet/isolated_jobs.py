"""Isolated jobs: one command per child process, so that a crash, an out-of-memory kill or a
device fault ends that job only, and peak memories of two jobs never mix.

Used by ``mossnet bench`` (one worker per model or prompt length), ``mossnet compare`` (a pool
of study runs, each with its own log) and the benchmark scripts.

* :func:`run_job` runs one command to its end, or until its timeout (then it is killed), and
  returns a :class:`JobResult`: exit status, captured output (or a log file), seconds, and
  :meth:`JobResult.failure`, one line saying why it failed.
* :func:`run_in_parallel` keeps up to N jobs running at once, in order, and reports each as it
  ends.
* A child hands results back as ``RESULT {json}`` lines on stdout (:func:`emit_result`), which
  the parent reads with :func:`read_results`; anything else the child prints is left alone.

The standard library's ``subprocess`` does the process work; this module only fixes, once,
what every caller needs on top of it: the kill on timeout, the log file, the failure line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

RESULT_PREFIX = "RESULT "
POLL_SECONDS = 0.5  # how often run_in_parallel looks for finished jobs


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
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, text=True,
                                     env=dict(env) if env is not None else None)

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
            if self._log is not None:
                self._log.close()
        return JobResult(self.proc.returncode, out or "", err or "", time.perf_counter() - self.started, killed_at)


def run_job(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            log: str | Path | None = None, capture: bool = True) -> JobResult:
    """Run ``cmd`` in a child process to its end, or kill it after ``timeout`` seconds (output:
    as :class:`Job` says)."""
    return Job(cmd, env=env, log=log, capture=capture).wait(timeout)


def run_in_parallel(starters: Sequence[Callable[[], Job]], parallel: int,
                    on_end: Callable[[int, JobResult], None]) -> None:
    """Start the jobs in order (``starters[i]()`` starts job i), at most ``parallel`` at once,
    and call ``on_end(i, result)`` as each one ends. Returns when all have ended."""
    queue = list(enumerate(starters))
    running: list[tuple[int, Job]] = []
    while queue or running:
        while queue and len(running) < max(1, parallel):
            index, start = queue.pop(0)
            running.append((index, start()))
        time.sleep(POLL_SECONDS)
        still = []
        for index, job in running:
            if job.finished():
                on_end(index, job.wait())
            else:
                still.append((index, job))
        running = still
