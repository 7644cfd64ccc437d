"""Data-preparation benchmarks (CPU): tokenisation throughput of the whole ``prepare-data``
command against ``encode_batch``, peak memory of the process tree, and the trainer's batch cost.

    python benchmarks/bench_data.py make-jsonl --out /tmp/corpus.jsonl --size 2GB
    python benchmarks/bench_data.py throughput --input /tmp/corpus_200MB.jsonl --workers 2 --repeats 2
    python benchmarks/bench_data.py rss --input /tmp/corpus.jsonl --workers 2
    python benchmarks/bench_data.py loader --data DIR

``make-jsonl`` builds a JSON Lines file from the local corpora only (no download): the text of
each built-in corpus that is installed (Shakespeare, the King James Bible, the Python manual
when its Debian package is there; all three splits), in order, cut into documents of whole
paragraphs (text between blank lines) of one play / book / chapter, a document ending at the
first paragraph that takes it to ``--doc-bytes`` characters (default 4096; ``--doc-bytes 1``
gives one paragraph per document, the worst case for per-document costs), one
``{"text", "source", "copy"}`` object per line. The list is repeated until the file reaches
``--size``; copy k > 0 prefixes each document with ``[copy k] ``, so every document is distinct.

``throughput`` runs, alternately and ``--repeats`` times each, in fresh processes with the same
thread budget (``--workers N``):
  * baseline: the same tokenizer's ``encode_batch`` (and ``encode_batch_fast``) over the
    documents of the file, pre-loaded into memory, in batches of 1,000 documents, with
    ``RAYON_NUM_THREADS=N`` and ``TOKENIZERS_PARALLELISM=true`` (only the encoding is timed);
  * ours: the whole ``mossnet prepare-data --input FILE --workers N`` command, wall clock from
    process start to exit (imports, reading, JSON parsing, hashing, writing and the manifest).
Throughput is text MB (UTF-8 bytes of the documents) per second.

Wall-clock ratios on a shared machine move with what else runs, so CPU seconds (the baseline's
process time; the command's and its workers' user + system time) are reported beside them.

``rss`` runs the whole command and samples, every 0.2 s, the resident set of the process and
all its descendants (summed RSS, which counts pages shared after ``fork`` once per process, and
summed PSS, which splits them), and reports the peaks.

``loader`` times ``TokenBatches.batch`` (the trainer's data loading on the host) at the
``base`` preset's batch (16 x 1024 tokens) on a prepared corpus, as one memmap and cut into
shards. The GPU step it is to be compared with is not measured here (no GPU on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MOSSNET = [sys.executable, "-m", "mossnet.cli.main"]


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?B?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 2GB, got {text!r}")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[match.group(2)]
    return int(float(match.group(1)) * unit)


# ---------------------------------------------------------------------------------------------
# make-jsonl


def make_jsonl(out: Path, size: int, doc_bytes: int) -> dict:
    from mossnet.data.corpora import CORPORA, SPLITS, load_corpus
    from mossnet.data.errors import MissingDataPackageError

    documents, used = [], []
    for corpus in CORPORA:
        try:
            splits = load_corpus(corpus)
        except MissingDataPackageError:
            continue  # e.g. pydocs without the Debian python3.X-doc package
        used.append(corpus)
        for split in SPLITS:
            for doc in splits[split]:
                current = ""
                for paragraph in re.split(r"\n\s*\n", doc.text):
                    if paragraph.strip():
                        current = f"{current}\n\n{paragraph.strip()}" if current else paragraph.strip()
                    if len(current) >= doc_bytes:
                        documents.append((doc.name, current))
                        current = ""
                if current:
                    documents.append((doc.name, current))
    written = lines = copy = 0
    with out.open("w", encoding="utf-8") as file:
        while written < size:
            prefix = f"[copy {copy}] " if copy else ""
            for source, text in documents:
                line = json.dumps({"text": prefix + text, "source": source, "copy": copy}, ensure_ascii=False) + "\n"
                file.write(line)
                written += len(line.encode("utf-8"))
                lines += 1
                if written >= size:
                    break
            copy += 1
    return {"file": str(out), "bytes": written, "lines": lines, "corpora": used, "documents_per_copy": len(documents),
            "mean_document_chars": round(sum(len(t) for _, t in documents) / len(documents)), "copies": copy}


# ---------------------------------------------------------------------------------------------
# throughput

_BASELINE = r"""
import json, sys, time
from tokenizers import Tokenizer
path, tokenizer_json = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(tokenizer_json)
tok.encode_special_tokens = True
texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]
n_bytes = sum(len(t.encode("utf-8")) for t in texts)
result = {"bytes": n_bytes, "documents": len(texts)}
for name in ("encode_batch", "encode_batch_fast"):
    encode = getattr(tok, name)
    tokens = 0
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), 1000):
        tokens += sum(len(e) for e in encode(texts[i:i + 1000], add_special_tokens=False))
    result[name] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                    "tokens": tokens}
print(json.dumps(result))
"""


def _tokenizer_json(spec: str, workdir: Path) -> Path:
    """A tokenizer.json for ``spec`` (gpt2 or a path), saved the way prepare-data saves it."""
    from mossnet.data.tokenizer import build_tokenizer

    folder = workdir / "tokenizer"
    if not folder.exists():
        build_tokenizer(spec, []).save_pretrained(str(folder))
    return folder


def run_baseline(path: Path, tokenizer_dir: Path, workers: int) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(workers), "TOKENIZERS_PARALLELISM": "true"}
    out = subprocess.run([sys.executable, "-c", _BASELINE, str(path), str(tokenizer_dir / "tokenizer.json")],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_prepare(path: Path, tokenizer_dir: Path, workers: int, out: Path, sample: bool = False) -> dict:
    """The whole command, wall clock; with ``sample``, peak memory of its process tree too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [*MOSSNET, "prepare-data", "--input", str(path), "--tokenizer", str(tokenizer_dir), "--out", str(out),
           "--workers", str(workers), "--no-progress", "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"rss": 0, "pss": 0}
    sampler = threading.Thread(target=_sample_tree, args=(process.pid, peaks, process), daemon=True) if sample else None
    if sampler:
        sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its (waited) workers
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if sampler:
        sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"prepare-data failed: {stderr.strip()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    splits = manifest["splits"].values()
    result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "bytes": sum(e["bytes"] for e in splits),
              "tokens": sum(e["tokens"] - e["documents"] for e in manifest["splits"].values()),
              "documents": sum(e["documents"] for e in manifest["splits"].values()), "command": " ".join(cmd[1:])}
    if sample:
        result.update(peak_rss_bytes=peaks["rss"], peak_pss_bytes=peaks["pss"])
    return result


def _sample_tree(pid: int, peaks: dict, process, interval: float = 0.2) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while process.poll() is None:
        rss = pss = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            try:
                info = member.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        peaks["rss"], peaks["pss"] = max(peaks["rss"], rss), max(peaks["pss"], pss)
        time.sleep(interval)


def throughput(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        tokenizer_dir = _tokenizer_json(args.tokenizer, work)
        runs = {"baseline": [], "prepare_data": []}
        for _ in range(args.repeats):
            runs["baseline"].append(run_baseline(args.input, tokenizer_dir, args.workers))
            runs["prepare_data"].append(run_prepare(args.input, tokenizer_dir, args.workers, work / "out"))
        best = lambda items, key: min(items, key=lambda r: r[key]["seconds"] if key in r else r["seconds"])  # noqa: E731
        base = best(runs["baseline"], "encode_batch")
        fast = best(runs["baseline"], "encode_batch_fast")
        ours = min(runs["prepare_data"], key=lambda r: r["seconds"])
        assert ours["tokens"] == base["encode_batch"]["tokens"], (ours["tokens"], base["encode_batch"]["tokens"])
        mb = ours["bytes"] / 1e6
        base_cpu = min(r["encode_batch"]["cpu_seconds"] for r in runs["baseline"])
        fast_cpu = min(r["encode_batch_fast"]["cpu_seconds"] for r in runs["baseline"])
        ours_cpu = min(r["cpu_seconds"] for r in runs["prepare_data"])
        summary = {
            "text_MB": round(mb, 1), "documents": ours["documents"], "tokens": ours["tokens"],
            "encode_batch_MB_s": round(mb / base["encode_batch"]["seconds"], 2),
            "encode_batch_fast_MB_s": round(mb / fast["encode_batch_fast"]["seconds"], 2),
            "prepare_data_MB_s": round(mb / ours["seconds"], 2),
            "prepare_data_over_encode_batch": round(base["encode_batch"]["seconds"] / ours["seconds"], 3),
            "prepare_data_over_encode_batch_fast": round(fast["encode_batch_fast"]["seconds"] / ours["seconds"], 3),
            # CPU seconds: what the work costs, whatever else the shared machine is running
            # (each the least of its runs: the least disturbed by the machine's other work)
            "encode_batch_cpu_s": round(base_cpu, 1),
            "encode_batch_fast_cpu_s": round(fast_cpu, 1),
            "prepare_data_cpu_s": round(ours_cpu, 1),
            "cpu_ratio_encode_batch_over_prepare_data": round(base_cpu / ours_cpu, 3),
            "cpu_ratio_encode_batch_fast_over_prepare_data": round(fast_cpu / ours_cpu, 3),
            "load_average_after": os.getloadavg()[0],
        }
        return {"summary": summary, "runs": runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rss(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        tokenizer_dir = _tokenizer_json(args.tokenizer, work)
        result = run_prepare(args.input, tokenizer_dir, args.workers, work / "out", sample=True)
        result["input_bytes"] = args.input.stat().st_size
        result["text_MB_s"] = round(result["bytes"] / 1e6 / result["seconds"], 2)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def loader(args) -> dict:
    import numpy as np

    from mossnet.data import TokenBatches, open_split, read_manifest
    from mossnet.data.shards import ShardedTokens

    tokens = open_split(args.data, "train")
    whole = np.asarray(tokens)
    manifest = read_manifest(args.data)
    # The same stream cut into 8 shards (as ShardedTokens reads a many-shard split).
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        shards, bounds = [], np.linspace(0, len(whole), 9).astype(int)
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            name = f"train_{i:05d}.bin"
            whole[lo:hi].tofile(work / name)
            shards.append({"file": name, "tokens": int(hi - lo), "sha256": "0" * 64})
        sharded = ShardedTokens(work, shards, whole.dtype)
        result = {"train_tokens": int(len(whole)), "batch": [args.batch_size, args.seq_len]}
        for name, array in (("memmap", tokens), ("8 shards", sharded)):
            batches = TokenBatches(array, args.batch_size, args.seq_len, seed=0, vocab_size=manifest["vocab_size"])
            for step in range(5):
                batches.batch(step)  # warm the page cache
            start = time.perf_counter()
            for step in range(args.steps):
                batches.batch(step)
            result[f"{name}_ms_per_batch"] = round((time.perf_counter() - start) / args.steps * 1e3, 3)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("make-jsonl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=parse_size, default=parse_size("2GB"))
    p.add_argument("--doc-bytes", type=int, default=4096)
    for name in ("throughput", "rss"):
        p = sub.add_parser(name)
        p.add_argument("--input", type=Path, required=True)
        p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default) or a tokenizer path")
        p.add_argument("--workers", type=int, default=2)
        if name == "throughput":
            p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("loader")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    for p in sub.choices.values():
        p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = {"make-jsonl": lambda: make_jsonl(args.out, args.size, args.doc_bytes), "throughput": lambda: throughput(args),
              "rss": lambda: rss(args), "loader": lambda: loader(args)}[args.what]()
    result = {"benchmark": args.what, "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
