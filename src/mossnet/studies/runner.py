"""One study run = one JSON file. Runs already recorded are skipped; pending runs go through a pool.

A *spec* is a frozen :class:`~mossnet.studies.specs.RunSpec` (``LMRunSpec`` or ``MQARRunSpec``)
naming the result JSON it will write. :func:`run_pending` executes every spec whose result file
does not exist yet, either in this process (``jobs=1``, the GPU setting) or in ``jobs`` child
processes, each ``python -m mossnet.studies.runner SPEC.json`` (the spec's ``to_json``) with its
output in ``<result dir>/log.txt`` and ``threads`` torch threads (CPU: cores / jobs; the processes are
run by :mod:`mossnet.isolated_jobs`). A result
file is written atomically (tmp + rename) as the run's last act, so an interrupted study re-run
picks up exactly the runs that did not finish. A recorded result made with other settings (every
setting is copied into the result) is refused, never silently reused.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mossnet.isolated_jobs import Job, JobResult, python_module_command, run_in_parallel

from .specs import LMRunSpec, MQARRunSpec, RunSpec


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def is_done(spec: RunSpec) -> bool:
    return Path(spec.result).is_file()


def mismatches(spec: RunSpec, result: dict[str, Any]) -> list[str]:
    """Settings of ``spec`` that the stored ``result`` records with another value, or does not
    record at all (a result of older code, which may have meant something else by it)."""
    out = []
    for key, value in spec.settings().items():
        if key not in result:
            out.append(f"{key}: not recorded there, {value!r} now")
        elif result[key] != value:
            out.append(f"{key}: {result[key]!r} there, {value!r} now")
    return out


def check_existing(specs: list[RunSpec]) -> None:
    """Refuse to reuse a result made with other settings (a changed budget, steps, batch...)."""
    for spec in specs:
        if is_done(spec):
            diff = mismatches(spec, read_json(spec.result))
            if diff:
                raise ValueError(f"{spec.result} was made with other settings ({'; '.join(diff[:3])}): "
                                 "use another --out, or delete that run to redo it")


def execute(spec: RunSpec) -> dict[str, Any]:
    """Run one spec in this process and write its result JSON."""
    if isinstance(spec, LMRunSpec):
        from .lm_study import execute_lm

        result = execute_lm(spec)
    elif isinstance(spec, MQARRunSpec):
        from .mqar import execute_mqar

        result = execute_mqar(spec)
    else:
        raise ValueError(f"unknown run spec {type(spec).__name__}")
    write_json(spec.result, result)
    if isinstance(spec, MQARRunSpec):  # recorded: its resume point is no longer needed
        from .mqar import discard_resume_point

        discard_resume_point(spec)
    return result


def keep_earlier_log(rdir: Path) -> None:
    """Move an earlier attempt's ``log.txt`` (a run that failed or was cut) to ``log.<k>.txt``, the
    first free k, so a retry does not overwrite the traceback that says why it failed."""
    log = rdir / "log.txt"
    if not log.exists():
        return
    k = 1
    while (rdir / f"log.{k}.txt").exists():
        k += 1
    log.rename(rdir / f"log.{k}.txt")


def run_pending(specs: list[RunSpec], jobs: int = 1, say: Callable[[str], None] = print) -> list[str]:
    """Execute the specs whose result is missing. Returns the names of the runs that failed."""
    check_existing(specs)
    pending = [s for s in specs if not is_done(s)]
    done = len(specs) - len(pending)
    if done:
        say(f"{done} of {len(specs)} runs already have a result: skipped")
    failed: list[str] = []
    started = time.perf_counter()
    if jobs <= 1:
        for i, spec in enumerate(pending, 1):
            say(f"[{i}/{len(pending)}] {spec.name}")
            t0 = time.perf_counter()
            try:
                execute(spec)
            except Exception as err:  # one failed run must not lose the others
                failed.append(spec.name)
                say(f"  FAILED: {type(err).__name__}: {err}")
            else:
                say(f"  done in {time.perf_counter() - t0:.0f} s")
        return failed

    def start(n: int, spec: RunSpec) -> Job:
        rdir = Path(spec.result).parent
        rdir.mkdir(parents=True, exist_ok=True)
        spec_path = rdir / "spec.json"
        write_json(spec_path, spec.to_json())
        keep_earlier_log(rdir)
        job = Job(python_module_command("mossnet.studies.runner", str(spec_path)),
                  env=dict(os.environ, PYTHONUNBUFFERED="1"), log=rdir / "log.txt")
        say(f"[{n}/{len(pending)}] started {spec.name} (log: {rdir / 'log.txt'})")
        return job

    def on_end(i: int, result: JobResult) -> None:
        spec = pending[i]
        if result.returncode == 0 and is_done(spec):
            say(f"  {spec.name} done in {result.seconds:.0f} s")
        else:
            failed.append(spec.name)
            say(f"  {spec.name} FAILED (exit {result.returncode}); see {Path(spec.result).parent / 'log.txt'}")

    run_in_parallel([functools.partial(start, n, spec) for n, spec in enumerate(pending, 1)], jobs, on_end)
    say(f"{len(pending)} runs in {time.perf_counter() - started:.0f} s")
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mossnet.studies.runner SPEC.json", file=sys.stderr)
        return 2
    execute(RunSpec.from_json(read_json(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
