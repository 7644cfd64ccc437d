"""Training tokens/s and batch-1 decode latency with the fused Triton kernels against their
PyTorch references (``ExecutionPolicy.fused_ops`` "auto" vs "reference"), side by side on one card.

    python benchmarks/bench_fused.py --models base,converted --repeats 3 --out fused.json

For each model and step kind (eager; captured: the trainer's CUDA-graph step) the two policies
alternate in one process on equal models (one seed) and the same batch, and the median of ``--repeats``
timings is reported with the kernel launches of one eager step (``torch.profiler``, CUDA kernel
events). The step is forward + backward + clipping + fused AdamW in bf16 autocast. Models are
those of ``bench_layout_gate.py``: ``base`` (routed) and ``converted`` (dense, k = E = 9, 30
layers, d 576). Decode (``--decode-model``): ms per greedy step at batch 1 after a 2,048-token
prompt, eager and replayed from the decode graph (no compile), the policies alternating; and the
eager prefill of that prompt (filling a cache), the policies alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layout_gate import MODELS, add_training_arguments, seconds_per_step  # noqa: E402  (one definition of the models)

POLICIES = ("reference", "auto")
DEVICE = "cuda"  # tests run the functions below on the CPU with a tiny model


def build(model_name: str):
    import torch

    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.train.optim import build_optimizer

    spec = dict(MODELS[model_name])
    preset = spec.pop("preset", None)
    config = MossNetConfig.from_preset(preset, **spec) if preset else MossNetConfig(**spec)
    torch.manual_seed(0)
    model = MossNetForCausalLM(config).to(DEVICE).train()
    return model, build_optimizer(model, 1e-4, 0.1)


def loss_fn(model):
    import torch
    import torch.nn.functional as F

    def loss(ids, labels):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(input_ids=ids)
            ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), labels.reshape(-1))
            return ce + out.aux_loss, ce, out.aux_loss, {}
    return loss


def eager_step(model, optimizer):
    import torch

    loss = loss_fn(model)

    def step(ids, labels):
        total, _, _, _ = loss(ids[0], labels[0])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def kernel_launches(step, ids) -> int | None:
    """CUDA kernels launched by one call of ``step`` (torch.profiler's kernel events); None off CUDA."""
    if DEVICE != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(ids[..., :-1], ids[..., 1:])
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def measure(model_name: str, batch: int, seq: int, steps: int, repeats: int,
            kinds: tuple[str, ...] = ("eager", "captured")) -> dict:
    """One model per policy (the same seed, so the same weights): a captured step owns the
    gradient and optimiser buffers it was captured with, so two must not share a model."""
    import torch

    from mossnet.train.cuda_graph_step import CapturedTrainStep

    result: dict = {"model": model_name, "batch": batch, "seq": seq, "steps": steps}
    for kind in kinds:
        steppers, policies = {}, {}
        for policy in POLICIES:
            model, optimizer = build(model_name)
            model.execution_policy = model.execution_policy.replace(fused_ops=policy)
            policies[policy] = model.execution_policy.as_dict()
            steppers[policy] = (eager_step(model, optimizer) if kind == "eager"
                                else CapturedTrainStep(model, optimizer, loss_fn(model), grad_clip=1.0))
        ids = torch.randint(0, model.config.vocab_size, (1, batch, seq + 1), device=DEVICE)
        seconds: dict[str, list[float]] = {p: [] for p in POLICIES}
        for _ in range(repeats):
            for policy in POLICIES:  # alternate, so drift hits both alike
                seconds[policy].append(seconds_per_step(steppers[policy], ids, steps))
        for policy in POLICIES:
            median = statistics.median(seconds[policy])
            row = {"tokens_per_s": batch * seq / median, "step_ms": 1e3 * median, "runs_s": seconds[policy],
                   "policy": policies[policy]}
            if kind == "eager":
                row["kernel_launches"] = kernel_launches(steppers[policy], ids)
            result[f"{kind}/{policy}"] = row
        result[f"{kind}/speedup"] = result[f"{kind}/reference"]["step_ms"] / result[f"{kind}/auto"]["step_ms"]
        del steppers
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    if DEVICE == "cuda":
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def decode_ms(model, prompt_len: int, steps: int) -> float:
    """ms per greedy one-token step at batch 1 after a ``prompt_len``-token prompt (bf16 autocast,
    no gradients), under the model's current execution policy."""
    import torch

    from mossnet.models.mossnet.cuda_graph_decode import reset_graph_decoders

    reset_graph_decoders(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
        for _ in range(4):  # the first step captures the decode graph
            token = model(input_ids=token, cache=cache).logits[:, -1:].argmax(-1)
        _sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache).logits[:, -1:].argmax(-1)
        _sync()
    return 1e3 * (time.perf_counter() - t0) / steps


def measure_decode(model_name: str, prompt_len: int, steps: int, repeats: int, graphs=(False, True)) -> dict:
    """Batch-1 decode ms/step, eager and graph-captured (no compile), fused_ops reference vs auto."""
    model, _ = build(model_name)
    model.eval()
    base = model.execution_policy
    result: dict = {"model": model_name, "prompt_len": prompt_len, "steps": steps}
    for graph in graphs:
        runs: dict[str, list[float]] = {p: [] for p in POLICIES}
        for _ in range(repeats):
            for policy in POLICIES:
                model.execution_policy = base.replace(fused_ops=policy, decode_graph=graph, decode_graph_compile=False)
                runs[policy].append(decode_ms(model, prompt_len, steps))
        kind = "graph" if graph else "eager"
        for policy in POLICIES:
            result[f"decode_{kind}/{policy}"] = {"ms_per_step": statistics.median(runs[policy]), "runs_ms": runs[policy]}
    return result


def prefill_ms(model, prompt_len: int, repeats: int) -> float:
    """Median ms of one eager prefill of a ``prompt_len``-token prompt at batch 1 that fills a
    cache (bf16 autocast, no gradients, the last position's logits), under the model's policy."""
    import torch

    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=DEVICE)
    times = []
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        for i in range(repeats + 1):  # the first call warms up (and tunes) the kernels
            _sync()
            t0 = time.perf_counter()
            model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            _sync()
            if i:
                times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure_prefill(model_name: str, prompt_len: int, repeats: int) -> dict:
    """Batch-1 eager prefill ms, fused_ops reference vs auto, alternating."""
    model, _ = build(model_name)
    model.eval()
    base = model.execution_policy
    runs: dict[str, list[float]] = {p: [] for p in POLICIES}
    for _ in range(repeats):
        for policy in POLICIES:
            model.execution_policy = base.replace(fused_ops=policy)
            runs[policy].append(prefill_ms(model, prompt_len, 3))
    return {"model": model_name, "prompt_len": prompt_len,
            **{f"prefill/{p}": {"ms": statistics.median(runs[p]), "runs_ms": runs[p]} for p in POLICIES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(ap, steps=10)
    ap.add_argument("--decode-model", default="base", help="batch-1 decode and prefill timing of this model ('' to skip)")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--decode-steps", type=int, default=64)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_fused.py: needs a CUDA device (the fused kernels are GPU kernels)")
    rows = []
    for name in filter(None, args.models.split(",")):  # --models '': decode and prefill only
        if name not in MODELS:
            sys.exit(f"bench_fused.py: unknown model {name!r}; choose from {sorted(MODELS)}")
        batch = args.converted_batch if name == "converted" else args.batch
        row = measure(name, batch, args.seq, args.steps, args.repeats)
        rows.append(row)
        print(f"{name}: eager {row['eager/reference']['tokens_per_s']:,.0f} -> {row['eager/auto']['tokens_per_s']:,.0f} "
              f"tok/s ({row['eager/speedup']:.3f}x, launches {row['eager/reference']['kernel_launches']} -> "
              f"{row['eager/auto']['kernel_launches']}); captured {row['captured/reference']['tokens_per_s']:,.0f} -> "
              f"{row['captured/auto']['tokens_per_s']:,.0f} ({row['captured/speedup']:.3f}x)", flush=True)
    decode = []
    if args.decode_model and args.decode_model not in MODELS:
        sys.exit(f"bench_fused.py: unknown --decode-model {args.decode_model!r}; choose from {sorted(MODELS)}")
    if args.decode_model:
        decode.append(measure_decode(args.decode_model, args.prompt_len, args.decode_steps, args.repeats))
        d = decode[-1]
        print(f"{args.decode_model} decode at batch 1: eager {d['decode_eager/reference']['ms_per_step']:.2f} -> "
              f"{d['decode_eager/auto']['ms_per_step']:.2f} ms/step, graph {d['decode_graph/reference']['ms_per_step']:.2f}"
              f" -> {d['decode_graph/auto']['ms_per_step']:.2f} ms/step (reference -> fused)", flush=True)
        prefill = measure_prefill(args.decode_model, args.prompt_len, args.repeats)
        print(f"{args.decode_model} eager prefill of {args.prompt_len} tokens at batch 1: "
              f"{prefill['prefill/reference']['ms']:.2f} -> {prefill['prefill/auto']['ms']:.2f} ms (reference -> fused)",
              flush=True)
        decode.append(prefill)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "rows": rows, "decode": decode}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
