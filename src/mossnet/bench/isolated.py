"""Each model in its own process, so that peak memories do not mix: one worker per (model,
prompt length) or per model. A worker is ``python -m mossnet.cli.bench --worker ...`` (the CLI
parses the arguments and calls :func:`mossnet.bench.measure.measure`); it prints one ``RESULT``
line of JSON per measured row, which the parent reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mossnet.bench.report import print_row

WORKER_MODULE = "mossnet.cli.bench"
RESULT_PREFIX = "RESULT "


def worker_command(*argv: str) -> list[str]:
    """The command line of a worker process: this interpreter, ``-m`` the CLI module, ``argv``."""
    return [sys.executable, "-m", WORKER_MODULE, *argv]


def emit_result(row: dict) -> None:
    """In a worker: hand one row to the parent process."""
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def read_results(stdout: str) -> list[dict]:
    """In the parent: the rows a worker handed over, in order."""
    return [json.loads(line[len(RESULT_PREFIX):]) for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]


def _forwarded(args) -> list[str]:
    out = ["--device", args.device, "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
           "--long-decode-tokens", str(args.long_decode_tokens), "--long-from", str(args.long_from),
           "--mamba-block", str(args.mamba_block), "--mossnet-block", str(args.mossnet_block),
           "--cache-dir", args.cache_dir,
           "--smollm2-weights", args.smollm2_weights]
    return out + (["--tiny"] if args.tiny else [])


def _communicate(cmd: list[str], env: dict, timeout: int) -> tuple[str, str, int, str | None]:
    """Run ``cmd`` to its end or for ``timeout`` seconds: stdout, stderr, exit status, and
    "timeout after ..." where it was killed for time (else None)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, errtext = proc.communicate(timeout=max(1.0, timeout))
        err = None
    except subprocess.TimeoutExpired:
        proc.kill()
        out, errtext = proc.communicate()
        err = f"timeout after {timeout}s"
    return out, errtext, proc.returncode, err


def _failure(returncode: int, errtext: str) -> str:
    """Why a worker that exited left prompt lengths unmeasured."""
    if returncode < 0 or returncode == 137:
        return f"killed (signal {-returncode if returncode < 0 else 9}; out of memory?)"
    tail = (errtext or "").strip().splitlines()[-3:]
    return f"exit {returncode}: " + " | ".join(tail)


def run_model(name: str, contexts: list[int], args) -> list[dict]:
    """Subprocesses for one model: one per prompt length (``--process-per context``) or one for
    all lengths (``model``). Rows for the lengths that finished, and an error row for
    the first one that did not (out of memory, timeout)."""
    if args.process_per == "context" and len(contexts) > 1:
        rows = []
        for ctx in contexts:
            got = run_model(name, [ctx], args)
            rows += got
            if any("error" in r for r in got):
                break  # longer prompts would fail the same way
        return rows
    cmd = worker_command("--worker", "--model", name, "--contexts", ",".join(map(str, contexts)), *_forwarded(args))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    out, errtext, returncode, err = _communicate(cmd, env, args.timeout)
    rows = read_results(out)
    for row in rows:
        print_row(row)
    done = {r["context"] for r in rows}
    missing = [c for c in sorted(contexts) if c not in done]
    if missing:
        rows.append({"model": name, "context": missing[0], "error": err or _failure(returncode, errtext)})
    return rows
