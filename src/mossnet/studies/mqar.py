"""The MQAR study: recall accuracy of each architecture at several widths and numbers of pairs.

Grid: architectures x ``d_model`` x ``num_pairs`` x learning rates; a *cell* is (architecture,
width, pairs) and reports the best accuracy over its learning rates (Zoology's protocol). Every
architecture sees the same training stream (``make_mqar`` seeded by (seed, step)) and is tested on
the same held-out examples (a fixed seed no training batch uses).

The reference MossNet at width ``d`` has ``n_layers`` layers, E = 4 SSM experts of top-2 with
head width P = d / 4 and state N = 16, and a top-2 MoE MLP of 4 experts of width 2d; the other
architectures are matched to its active parameters (``arch_configs``). Loss: cross-entropy on
the query positions only (plus the routers' aux loss for MossNet variants).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .arch_configs import ARCHS, build_config, captures, describe_arch, model_class
from .mqar_data import IGNORE_INDEX, MQARSpec, make_mqar, recall_accuracy

EVAL_SEED = 2_000_000_011  # held-out examples; training batches use seeds below 2**31 - 1 - this


def reference_config(d_model: int, vocab_size: int, n_layers: int = 2, state_dim: int = 16):
    from mossnet import MossNetConfig

    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4 (P = d_model / 4), got {d_model}")
    return MossNetConfig(
        vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
        ssm_experts=4, ssm_top_k=2, ssm_head_dim=d_model // 4, ssm_state_dim=state_dim,
        mlp_experts=4, mlp_top_k=2, mlp_hidden_dim=2 * d_model,
    )


def train_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 1_000_000_007


def make_specs(out: str | Path, archs=ARCHS, widths=(32, 64), pairs=(4, 8, 16), lrs=(3e-3, 1e-2),
               seq_len: int = 64, vocab_size: int = 64, steps: int = 1500, batch_size: int = 16,
               n_layers: int = 2, seeds=(0,), eval_examples: int = 512, warmup_steps: int = 20,
               weight_decay: float = 0.1, eval_points: int = 0, device: str = "auto", dtype: str = "auto",
               threads: int = 0, cuda_graph: bool = False) -> list[dict[str, Any]]:
    out = Path(out)
    specs = []
    # pairs outermost: a study cut short still holds complete comparisons for the easier cells
    for n in pairs:
        for d in widths:
            for arch in archs:
                for lr in lrs:
                    for seed in seeds:
                        name = f"mqar/{arch}-d{d}-kv{n}-lr{lr:g}-s{seed}"
                        specs.append(dict(
                            kind="mqar", name=name, result=str(out / "runs" / name.split("/", 1)[1] / "result.json"),
                            arch=arch, d_model=d, num_pairs=n, lr=lr, seed=seed, seq_len=seq_len,
                            vocab_size=vocab_size, steps=steps, batch_size=batch_size, n_layers=n_layers,
                            eval_examples=eval_examples, warmup_steps=warmup_steps, weight_decay=weight_decay,
                            eval_points=eval_points, device=device, dtype=dtype, threads=threads,
                            cuda_graph=bool(cuda_graph) and captures(arch),
                        ))
    return specs


def _logits_and_aux(model, input_ids):
    out = model(input_ids=input_ids)
    aux = getattr(out, "aux_loss", None)
    return out.logits, aux


CURVE_EXAMPLES = 256  # held-out examples scored at each intermediate point of the accuracy curve


def _evaluate(model, xs, ys, device, autocast) -> tuple[int, int, float]:
    """(correct, queries, summed query loss) of ``model`` on the held-out examples ``xs, ys``."""
    import torch
    import torch.nn.functional as F

    correct = count = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(0, len(xs), 128):
            x, y = xs[i:i + 128].to(device), ys[i:i + 128].to(device)
            with autocast():
                logits, _ = _logits_and_aux(model, x)
            logits = logits.float()
            c, n = recall_accuracy(logits, y)
            correct, count = correct + c, count + n
            loss += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                          ignore_index=IGNORE_INDEX, reduction="sum"))
    return correct, count, loss


def curve_steps(steps: int, points: int) -> list[int]:
    """The 1-based steps after which the accuracy curve is measured: ``points`` evenly spaced ones,
    the last being ``steps`` (none when ``points`` is 0)."""
    points = max(0, min(int(points), steps))
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


def examples_to(curve: list[list[float]], threshold: float = 0.9) -> int | None:
    """Training examples at the first curve point whose accuracy reaches ``threshold`` (or None)."""
    return next((int(ex) for ex, acc in curve if acc >= threshold), None)


def _query_loss(model, input_ids, labels, autocast):
    """(loss to differentiate, cross-entropy on the query positions, routers' aux loss or None)."""
    import torch.nn.functional as F

    with autocast():
        logits, aux = _logits_and_aux(model, input_ids)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return (ce + aux.float() if aux is not None else ce), ce, aux


def _train_step(model, opt, device, dtype: str, cuda_graph: bool):
    """``step(x, y) -> query cross-entropy`` (a float): one AdamW step with clipping at 1.0, eager
    or replayed from a CUDA graph (``mossnet.train.cuda_graph_step``; the same step, tested equal)."""
    import torch

    from mossnet.runtime import autocast_factory

    autocast = autocast_factory(device, dtype, capture=cuda_graph)
    if cuda_graph:
        from mossnet.train.cuda_graph_step import CapturedTrainStep

        captured = CapturedTrainStep(
            model, opt, lambda ids, labels: (*_query_loss(model, ids, labels, autocast), {}), grad_clip=1.0)

        def graph_step(x, y) -> float:
            stats, _ = captured(x[None], y[None])  # (grad_accum=1, batch, seq)
            return float(stats[1])

        return graph_step

    def eager_step(x, y) -> float:
        total, ce, _ = _query_loss(model, x.to(device), y.to(device), autocast)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(ce.detach())

    return eager_step


def execute_mqar(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from mossnet.runtime import autocast_factory, resolve_device
    from mossnet.train.optim import build_optimizer, lr_at, set_lr

    from .common import set_threads

    set_threads(spec.get("threads", 0))
    device = resolve_device(spec.get("device", "auto"))
    autocast = autocast_factory(device, spec.get("dtype", "auto"))  # for the evaluations
    task = MQARSpec(vocab_size=spec["vocab_size"], seq_len=spec["seq_len"], num_pairs=spec["num_pairs"])
    ref = reference_config(spec["d_model"], spec["vocab_size"], spec["n_layers"])
    arch = spec["arch"]
    config = build_config(arch, ref, seq_len=spec["seq_len"])
    info = describe_arch(arch, config, spec["seq_len"])

    torch.manual_seed(spec["seed"])
    model = model_class(arch)(config).to(device)
    opt = build_optimizer(model, spec["lr"], spec["weight_decay"], (0.9, 0.95))
    train_step = _train_step(model, opt, device, spec.get("dtype", "auto"), bool(spec.get("cuda_graph")))
    steps, lr = spec["steps"], spec["lr"]
    losses = []
    xs, ys = make_mqar(spec["eval_examples"], task, EVAL_SEED)
    at = set(curve_steps(steps, spec.get("eval_points", 0)))
    curve: list[list[float]] = []  # [training examples, held-out accuracy on the first CURVE_EXAMPLES]
    eval_s = 0.0
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        set_lr(opt, lr_at(step, lr, spec["warmup_steps"], steps, 0.1))
        x, y = make_mqar(spec["batch_size"], task, train_seed(spec["seed"], step))
        value = train_step(x, y)
        if not math.isfinite(value):
            break
        losses.append(value)
        if step + 1 in at:
            te = time.perf_counter()
            model.eval()
            c, n, _ = _evaluate(model, xs[:CURVE_EXAMPLES], ys[:CURVE_EXAMPLES], device, autocast)
            model.train()
            curve.append([(step + 1) * spec["batch_size"], c / max(n, 1)])
            eval_s += time.perf_counter() - te
    train_s = time.perf_counter() - t0 - eval_s

    model.eval()
    correct, count, eval_loss = _evaluate(model, xs, ys, device, autocast)
    every = max(1, steps // 50)
    return {
        # every setting that changes the answer is recorded, so that a re-run with other settings
        # is refused instead of silently reusing this result (runner.check_existing)
        **{k: spec[k] for k in ("kind", "name", "arch", "d_model", "num_pairs", "lr", "seed", "seq_len",
                                "vocab_size", "steps", "batch_size", "n_layers")},
        **{k: spec[k] for k in ("warmup_steps", "weight_decay", "eval_examples", "eval_points") if k in spec},
        "params": info,
        "accuracy": correct / max(count, 1),
        "eval_loss": eval_loss / max(count, 1),
        "eval_queries": count,
        "accuracy_curve": curve,
        "examples_to_90": examples_to(curve, 0.9),
        "diverged": len(losses) < steps,
        "train_loss_curve": [[i + 1, losses[i]] for i in range(every - 1, len(losses), every)],
        "train_s": train_s,
        "examples_per_s": spec["batch_size"] * len(losses) / max(train_s, 1e-9),
        "device": str(device),
        "cuda_graph": bool(spec.get("cuda_graph")),
        "torch_threads": torch.get_num_threads(),
    }
