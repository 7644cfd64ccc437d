"""Each model in its own process, so that peak memories do not mix: one worker per (model,
prompt length) or per model. A worker is ``python -m mossnet.cli.bench --worker ...`` (the CLI
parses the arguments and calls :func:`mossnet.bench.measure.measure`); it hands each measured
row back as a ``RESULT`` line (:mod:`mossnet.isolated_jobs`, which also runs the processes)."""

from __future__ import annotations

import os

from mossnet.bench.report import print_row
from mossnet.isolated_jobs import python_module_command, read_results, run_job

WORKER_MODULE = "mossnet.cli.bench"


def worker_command(*argv: str) -> list[str]:
    """The command line of a worker process: this interpreter, ``-m`` the CLI module, ``argv``."""
    return python_module_command(WORKER_MODULE, *argv)


def _forwarded(args) -> list[str]:
    out = ["--device", args.device, "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
           "--long-decode-tokens", str(args.long_decode_tokens), "--long-from", str(args.long_from),
           "--mamba-block", str(args.mamba_block), "--mossnet-block", str(args.mossnet_block),
           "--cache-dir", args.cache_dir,
           "--smollm2-weights", args.smollm2_weights]
    return out + (["--tiny"] if args.tiny else [])


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
    job = run_job(cmd, env=env, timeout=args.timeout)
    rows = read_results(job.stdout)
    for row in rows:
        print_row(row)
    done = {r["context"] for r in rows}
    missing = [c for c in sorted(contexts) if c not in done]
    if missing:
        rows.append({"model": name, "context": missing[0], "error": job.failure() or "exit 0 without a result for this length"})
    return rows
