"""The one runner of child-process jobs: results handed back, timeouts, kills, logs, a pool."""

import sys

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
