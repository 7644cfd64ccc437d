"""The one runner of child-process jobs: results handed back, timeouts, kills, logs, a pool."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mossnet import isolated_jobs
from mossnet.isolated_jobs import Job, emit_result, python_module_command, read_results, run_in_parallel, run_job


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_hands_rows_back_among_other_output(capsys):
    emit_result({"a": 1})
    assert read_results("noise\n" + capsys.readouterr().out + "more noise\n") == [{"a": 1}]
    # the child speaks the protocol by hand: importing mossnet there would cost seconds of torch import
    code = ("import json; print('hello'); print('RESULT ' + json.dumps({'x': [1, 2]})); "
            "print('RESULT ' + json.dumps({'y': 3}))")
    result = run_job(python(code))
    assert result.ok and result.failure() is None
    assert read_results(result.stdout) == [{"x": [1, 2]}, {"y": 3}]


def test_a_job_past_its_timeout_is_killed_and_says_so():
    result = run_job(python("import time; time.sleep(60)"), timeout=0.5)
    assert not result.ok and result.timeout == 0.5
    assert result.failure() == "timeout after 0.5s"
    assert result.seconds < 30


def test_failures_name_the_exit_status_and_stderr_tail():
    code = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(5)]; sys.exit(3)"
    assert run_job(python(code)).failure() == "exit 3: line 2 | line 3 | line 4"
    killed = run_job(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert killed.failure() == "killed (signal 9; out of memory?)"


def test_environment_and_log_file(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("earlier run\n")
    code = "import os, sys; print(os.environ['ISOLATED_JOBS_TEST'], flush=True); print('oops', file=sys.stderr)"
    result = run_job(python(code), env={"ISOLATED_JOBS_TEST": "seen", "PATH": "/usr/bin"}, log=log)
    assert result.ok and result.stdout == "" and result.stderr == ""
    assert log.read_text().splitlines() == ["earlier run", "seen", "oops"]  # appended, stderr merged


def test_python_module_command_uses_this_interpreter():
    assert python_module_command("mossnet.cli.bench", "--worker") == [sys.executable, "-m", "mossnet.cli.bench",
                                                                      "--worker"]


@pytest.mark.parametrize("parallel", [1, 2])
def test_the_pool_runs_at_most_parallel_jobs_and_reports_each(monkeypatch, parallel):
    monkeypatch.setattr(isolated_jobs, "POLL_SECONDS", 0.05)
    live, most, started, ended = [0], [0], [], {}

    def starter(i: int):
        def start() -> Job:
            started.append(i)
            live[0] += 1
            most[0] = max(most[0], live[0])
            return Job(python(f"import time, sys; time.sleep(0.3); sys.exit({i})"))
        return start

    def on_end(i, result):
        live[0] -= 1
        ended[i] = result.returncode

    run_in_parallel([starter(i) for i in range(4)], parallel, on_end)
    assert started == [0, 1, 2, 3] and ended == {0: 0, 1: 1, 2: 2, 3: 3}
    assert most[0] == parallel


SLEEPER = "import time; time.sleep(60)"


def gone(pid: int, within: float = 3.0) -> bool:
    """Whether process ``pid`` no longer exists (a zombie still does), waiting up to ``within`` s."""
    end = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def kill_if_alive(pid: int) -> None:
    # a failing test must not leave its 60 s sleepers behind
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("where", ["on_end", "starter"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_leaving_the_pool_stops_the_jobs_still_running(monkeypatch, tmp_path, where, error):
    monkeypatch.setattr(isolated_jobs, "POLL_SECONDS", 0.05)
    handler_before = signal.getsignal(signal.SIGTERM)
    long_jobs: list[Job] = []

    def start_long() -> Job:
        long_jobs.append(Job(python(SLEEPER), log=tmp_path / "long.log"))
        return long_jobs[-1]

    def start_short() -> Job:
        if where == "starter":
            raise error("a starter failed")
        return Job(python("pass"))

    def on_end(i, result):
        raise error("on_end failed")

    t0 = time.monotonic()
    try:
        with pytest.raises(error):
            run_in_parallel([start_long, start_short], 2, on_end)
        job = long_jobs[0]
        assert job.proc.poll() is not None  # reaped, not left running as an orphan
        assert job.proc.returncode == -signal.SIGTERM  # SIGTERM sufficed: no wait for the SIGKILL
        assert job._log.closed
        assert time.monotonic() - t0 < isolated_jobs.KILL_GRACE_SECONDS
        assert signal.getsignal(signal.SIGTERM) is handler_before
    finally:
        for job in long_jobs:
            kill_if_alive(job.proc.pid)


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(monkeypatch):
    monkeypatch.setattr(isolated_jobs, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(isolated_jobs, "KILL_GRACE_SECONDS", 0.5)
    jobs: list[Job] = []
    # the child says when it ignores SIGTERM: a SIGTERM before that would end it without the SIGKILL
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)")

    def start() -> Job:
        jobs.append(Job(python(stubborn)))
        jobs[-1].proc.stdout.readline()
        return jobs[-1]

    def on_end(i, result):
        raise RuntimeError("stop")

    try:
        with pytest.raises(RuntimeError):
            run_in_parallel([start, lambda: Job(python("pass"))], 2, on_end)
        assert jobs[0].proc.returncode == -signal.SIGKILL
    finally:
        kill_if_alive(jobs[0].proc.pid)


# A parent that runs two sleepers through the pool and writes their PIDs where the test reads them.
# It imports mossnet_cli first: with it loaded, importing mossnet skips the seconds of torch import.
PARENT_SCRIPT = textwrap.dedent("""
    import os
    import sys
    import mossnet_cli  # noqa: F401
    from mossnet.isolated_jobs import Job, run_in_parallel

    pids = []

    def start():
        job = Job([sys.executable, "-c", "import time; time.sleep(60)"], capture=False)
        pids.append(job.proc.pid)
        if len(pids) == 2:
            with open(sys.argv[1] + ".tmp", "w") as f:  # renamed when complete: the test never reads half
                f.write(" ".join(map(str, pids)))
            os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        return job

    run_in_parallel([start, start], 2, lambda i, result: None)
""")


def test_a_parent_killed_with_sigterm_stops_its_jobs(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "pids"
    script.write_text(PARENT_SCRIPT)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], env=env)
    pids: list[int] = []
    try:
        end = time.monotonic() + 30  # a loaded 2-core CI machine starts Python slowly
        while not pid_file.exists():
            assert parent.poll() is None, "the parent script ended early"
            assert time.monotonic() < end, "the parent script never started its jobs"
            time.sleep(0.05)
        pids = [int(pid) for pid in pid_file.read_text().split()]
        parent.send_signal(signal.SIGTERM)
        returncode = parent.wait(timeout=10)
        assert all(gone(pid) for pid in pids)  # no orphan left holding its GPU
        assert returncode == 128 + signal.SIGTERM  # left by SystemExit, after the cleanup
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            kill_if_alive(pid)
