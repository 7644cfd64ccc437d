"""MQAR runs: recall accuracy of an architecture trained on a stream of fresh examples.

One run trains one model on ``make_mqar`` batches seeded by (seed, step) (the same stream for
every architecture of a study) and scores held-out examples drawn with a seed no training batch
uses. The task is one (length, pairs) slice, or (``spec.mixture``) Zoology's training mixture,
scored per slice.

Studies built from these runs:

* ``mqar``: the grid architectures x ``d_model`` x ``num_pairs`` x learning rates; a *cell*
  is (architecture, width, pairs) and reports the best accuracy over its learning rates
  (Zoology's protocol). The reference MossNet at width ``d`` has ``n_layers`` layers, E = 4 SSM
  experts of top-2 with head width P = d / 4 and state N = 16, and a top-2 MoE MLP of 4 experts
  of width 2d; the other architectures are matched to its active parameters (``arch_configs``);
* ``mqar_gate`` and ``mqar_rank``: :mod:`mossnet.studies.mqar_calibration`, built on the
  explicit architectures ``attention`` (``attention_lm``, options in ``spec.model``),
  ``llama_plain`` (transformers' Llama of our baseline's shape at ``n_layers``) and
  ``mossnet_plain`` (the MossNet config ``spec.model`` says, nothing matched).

Loss: cross-entropy on the query positions only (plus the routers' aux loss for MossNet models).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch_configs import ARCHS, build_config, captures, describe_arch, model_class
from .mqar_data import (IGNORE_INDEX, MIXTURES, MQARSpec, generator_options, make_mqar, make_mqar_mixture,
                        recall_accuracy)
from .specs import MQARRunSpec

EVAL_SEED = 2_000_000_011  # held-out examples; training batches use seeds below 2**31 - 1 - this
EXPLICIT_ARCHS = ("attention", "llama_plain", "mossnet_plain")


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
               weight_decay: float = 0.1, eval_points: int = 0, generator: str = "zoology", device: str = "auto",
               dtype: str = "auto", threads: int = 0, cuda_graph: bool = False) -> list[MQARRunSpec]:
    """The ``mqar`` grid: one spec per (pairs, width, architecture, learning rate, seed)."""
    out = Path(out)
    specs = []
    # pairs outermost: a study cut short still holds complete comparisons for the easier cells
    for n in pairs:
        for d in widths:
            for arch in archs:
                for lr in lrs:
                    for seed in seeds:
                        name = f"mqar/{arch}-d{d}-kv{n}-lr{lr:g}-s{seed}"
                        specs.append(MQARRunSpec(
                            name=name, result=str(out / "runs" / name.split("/", 1)[1] / "result.json"),
                            arch=arch, d_model=d, num_pairs=n, lr=lr, seed=seed, seq_len=seq_len,
                            vocab_size=vocab_size, steps=steps, batch_size=batch_size, n_layers=n_layers,
                            eval_examples=eval_examples, warmup_steps=warmup_steps, weight_decay=weight_decay,
                            eval_points=eval_points, generator=generator, device=device, dtype=dtype,
                            threads=threads, cuda_graph=bool(cuda_graph) and captures(arch),
                        ))
    return specs


def train_slices(spec: MQARRunSpec) -> tuple[tuple[int, int, int], ...]:
    """The (length, pairs, weight) slices a run trains on."""
    if spec.mixture:
        if spec.mixture not in MIXTURES:
            raise ValueError(f"unknown MQAR mixture {spec.mixture!r}; choose from {sorted(MIXTURES)}")
        return MIXTURES[spec.mixture]
    return ((spec.seq_len, spec.num_pairs, 1),)


def task_specs(spec: MQARRunSpec) -> list[MQARSpec]:
    """One generator spec per slice (the slices scored at the end)."""
    options = generator_options(spec.generator)
    return [MQARSpec(vocab_size=spec.vocab_size, seq_len=T, num_pairs=n, **options) for T, n, _ in train_slices(spec)]


def training_batch(spec: MQARRunSpec, step: int) -> tuple:
    """(input_ids, labels) of training step ``step``: the same for every architecture."""
    seed = train_seed(spec.seed, step)
    if spec.mixture:
        x, y, _ = make_mqar_mixture(spec.batch_size, train_slices(spec), seed, spec.vocab_size,
                                    **generator_options(spec.generator))
        return x, y
    return make_mqar(spec.batch_size, task_specs(spec)[0], seed)


def max_len(spec: MQARRunSpec) -> int:
    return max(T for T, _, _ in train_slices(spec))


def build_model(spec: MQARRunSpec):
    """(model config, model class, describe_arch name) of the run's architecture."""
    if spec.arch == "attention":
        from .attention_lm import AttentionLM, AttentionLMConfig

        cfg = AttentionLMConfig(vocab_size=spec.vocab_size, d_model=spec.d_model, n_layers=spec.n_layers,
                                max_positions=max_len(spec), **spec.model)
        return cfg, AttentionLM, "attention"
    if spec.arch == "llama_plain":
        cfg = llama_plain_config(spec.vocab_size, spec.d_model, spec.n_layers, max_len(spec))
        return cfg, model_class("llama"), "llama"
    if spec.arch == "mossnet_plain":
        from mossnet import MossNetConfig

        cfg = MossNetConfig(vocab_size=spec.vocab_size, d_model=spec.d_model, n_layers=spec.n_layers, **spec.model)
        return cfg, model_class("mossnet"), "mossnet"
    ref = reference_config(spec.d_model, spec.vocab_size, spec.n_layers)
    return build_config(spec.arch, ref, seq_len=max_len(spec)), model_class(spec.arch), spec.arch


def llama_plain_config(vocab_size: int, d_model: int, n_layers: int, seq_len: int):
    """Our Llama baseline's shape (8/3 MLP, heads of 64, tied embeddings) at a given depth."""
    from transformers import LlamaConfig

    from mossnet.train.baselines import llama_mlp_width

    heads = max(1, d_model // min(64, d_model))
    return LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                       intermediate_size=llama_mlp_width(d_model), num_attention_heads=heads,
                       num_key_value_heads=heads, head_dim=d_model // heads, tie_word_embeddings=True,
                       max_position_embeddings=max(2048, seq_len))


def describe(kind: str, model, config, seq_len: int) -> dict[str, Any]:
    """Parameter counts and state bytes per layer (attention: the KV cache at ``seq_len``)."""
    if kind != "attention":
        return describe_arch(kind, config, seq_len)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "active": total, "embedding": config.vocab_size * config.d_model,
            "state_bytes_per_layer": 2 * config.d_model * seq_len * 4, "state_kind": "kv_cache",
            "d_model": config.d_model, "n_layers": config.n_layers}


def query_positions(labels, max_queries: int):
    """(batch, max_queries) int64: each row's labelled positions in order, then 0 for the unused
    slots (position 0 holds the first key, never a label, so a slot pointing there is ignored).

    Elementwise ops, a cumsum and a scatter: a static shape a CUDA graph can capture, and so no
    check of its own. Rows must hold at most ``max_queries`` labels (:func:`checked_batch`)."""
    import torch

    labelled = labels != IGNORE_INDEX
    slot = torch.where(labelled, labelled.cumsum(1) - 1, max_queries)  # unlabelled -> a spare column
    positions = labels.new_zeros(labels.shape[0], max_queries + 1)
    positions.scatter_(1, slot, torch.arange(labels.shape[1], device=labels.device).expand_as(labels))
    return positions[:, :max_queries]


def _final_hidden(model, input_ids):
    """(final normalised hidden states (batch, T, d), output weight (vocab, d), router aux loss
    or None): what the model's own forward computes before its output layer."""
    if hasattr(model, "final_hidden"):  # the study's AttentionLM (tied embedding)
        return model.final_hidden(input_ids), model.embed.weight, None
    out = model.base_model(input_ids=input_ids)  # transformers' convention: the model under the head
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}'s output layer has a bias; the query logits assume none")
    aux = model.router_loss(out.router_reports) if hasattr(model, "router_loss") else None
    return out.last_hidden_state, head.weight, aux


def query_logits(model, input_ids, labels, max_queries: int):
    """(logits (batch, max_queries, vocab), their labels (batch, max_queries), router aux loss or
    None). Only the queried positions go through the output layer: on Zoology's mixture that is
    64 of 256 positions per row at most, and the (batch, T, 8,192) logits, their fp32 copy and
    gradient were most of a run's time and memory. Equal to the full forward's logits at those
    positions (tests/studies/test_mqar_queries.py)."""
    import torch.nn.functional as F

    hidden, weight, aux = _final_hidden(model, input_ids)
    positions = query_positions(labels, max_queries)
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    return F.linear(picked.to(weight.dtype), weight), labels.gather(1, positions), aux


def max_queries(spec: MQARRunSpec) -> int:
    """The most queries a training row of the run can hold: its largest number of pairs."""
    return max(n for _, n, _ in train_slices(spec))


def checked_batch(spec: MQARRunSpec, step: int) -> tuple:
    """:func:`training_batch`, refused if a row holds more labels than :func:`max_queries` (the
    loss would silently drop the extra ones); on the CPU, before the batch reaches the device."""
    x, y = training_batch(spec, step)
    most = int((y != IGNORE_INDEX).sum(1).max())
    if most > max_queries(spec):
        raise ValueError(f"a training row of step {step} holds {most} queries, more than the "
                         f"{max_queries(spec)} the run's slices allow")
    return x, y


CURVE_EXAMPLES = 256  # held-out examples scored at each intermediate point of the accuracy curve


def _evaluate(model, xs, ys, device, autocast) -> tuple[int, int, float]:
    """(correct, queries, summed query loss) of ``model`` on the held-out examples ``xs, ys``
    (a model with ``aux_loss`` in its output or without)."""
    import torch
    import torch.nn.functional as F

    correct = count = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(0, len(xs), 128):
            x, y = xs[i:i + 128].to(device), ys[i:i + 128].to(device)
            with autocast():
                logits, y, _ = query_logits(model, x, y, int((y != IGNORE_INDEX).sum(1).max()))
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


def _query_loss(model, input_ids, labels, autocast, queries: int):
    """(loss to differentiate, cross-entropy on the query positions, routers' aux loss or None)."""
    import torch.nn.functional as F

    with autocast():
        logits, labels, aux = query_logits(model, input_ids, labels, queries)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return (ce + aux.float() if aux is not None else ce), ce, aux


def _train_step(model, opt, device, dtype: str, cuda_graph: bool, queries: int):
    """``step(x, y) -> query cross-entropy`` (a float): one AdamW step with clipping at 1.0, eager
    or replayed from a CUDA graph (``mossnet.train.cuda_graph_step``; the same step, tested equal)."""
    import torch

    from mossnet.runtime import autocast_factory

    autocast = autocast_factory(device, dtype, capture=cuda_graph)
    if cuda_graph:
        from mossnet.train.cuda_graph_step import CapturedTrainStep

        captured = CapturedTrainStep(
            model, opt, lambda ids, labels: (*_query_loss(model, ids, labels, autocast, queries), {}), grad_clip=1.0)

        def graph_step(x, y) -> float:
            stats, _ = captured(x[None], y[None])  # (grad_accum=1, batch, seq)
            return float(stats[1])

        return graph_step

    def eager_step(x, y) -> float:
        total, ce, _ = _query_loss(model, x.to(device), y.to(device), autocast, queries)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(ce.detach())

    return eager_step


class HeldOut:
    """The held-out examples of every slice of a run, scored together or per slice."""

    def __init__(self, spec: MQARRunSpec):
        self.sets = {}
        for i, task in enumerate(task_specs(spec)):
            self.sets[task.slice_name] = make_mqar(spec.eval_examples, task, EVAL_SEED + i)

    def score(self, model, device, autocast, examples: int | None = None) -> dict[str, tuple[int, int, float]]:
        """slice -> (correct, queries, summed query loss) on its first ``examples`` (all: None)."""
        return {name: _evaluate(model, xs[:examples], ys[:examples], device, autocast)
                for name, (xs, ys) in self.sets.items()}


def _accuracy(scores: dict[str, tuple[int, int, float]]) -> float:
    return sum(c for c, _, _ in scores.values()) / max(sum(n for _, n, _ in scores.values()), 1)


def _stops(spec: MQARRunSpec, scores, held_out: HeldOut, model, device, autocast) -> bool:
    """Zoology's early stopping: the watched slice has reached ``stop_accuracy`` on the curve's
    examples and then on all its held-out examples (the set the final score uses)."""
    if not spec.stop_slice:
        return False
    c, n, _ = scores[spec.stop_slice]
    if c / max(n, 1) < spec.stop_accuracy:
        return False
    xs, ys = held_out.sets[spec.stop_slice]
    c, n, _ = _evaluate(model, xs, ys, device, autocast)
    return c / max(n, 1) >= spec.stop_accuracy


@dataclass
class TrainLog:
    """What a run's training loop records."""

    losses: list[float] = field(default_factory=list)  # query cross-entropy of every step taken
    curve: list[list[float]] = field(default_factory=list)  # [examples, accuracy on CURVE_EXAMPLES per slice]
    slice_curves: dict[str, list[list[float]]] = field(default_factory=dict)
    stopped_at: int | None = None  # the step of an early stop
    eval_s: float = 0.0  # seconds spent scoring the curve, over every segment of the run
    elapsed_s: float = 0.0  # wall seconds of the training loop, evaluations included, over every segment
    resumed_at: list[int] = field(default_factory=list)  # the steps this run was resumed at
    # [examples, load entropy / ln E, adjacent tokens' best expert shared] of the MoSSE routers at
    # each curve point, for a model that routes (k < E): whether its routers collapse or thrash
    router_curve: list[list[float]] = field(default_factory=list)


ROUTER_EXAMPLES = 64  # held-out examples of the hardest slice that the router curve reads


def routes(model) -> bool:
    """True for a MossNet whose SSM routers choose (top-k of more than k experts)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "mossnet"
            and getattr(config, "ssm_experts", 1) > getattr(config, "ssm_top_k", 1))


def router_point(model, held_out: "HeldOut", device, autocast) -> tuple[float, float]:
    """(load entropy / ln E, share of adjacent tokens with the same best expert), averaged over
    the MoSSE routers, on the first ``ROUTER_EXAMPLES`` held-out examples of the hardest slice."""
    import torch

    from .lm_probes import _RouterTally
    from .mqar_data import slice_key

    xs, _ = held_out.sets[max(held_out.sets, key=slice_key)]
    x = xs[:ROUTER_EXAMPLES].to(device)
    tally = _RouterTally(model.config.ssm_top_k)
    with torch.no_grad(), autocast():
        out = model(input_ids=x, use_cache=False, output_router_stats=True)
    tally.add(out.router_logits, out.router_load, x.shape[0], x.shape[1])
    summary = tally.summary()
    return summary["load_entropy"], summary["top1_same"]


def _train(spec: MQARRunSpec, model, train_step, set_rate, held_out: HeldOut, device, autocast,
           log: TrainLog, first_step: int, save) -> TrainLog:
    """Steps ``first_step`` .. ``spec.steps - 1`` (fewer after a non-finite loss or an early stop),
    scoring the curve's held-out examples at ``curve_steps`` into ``log`` (which holds the earlier
    segments of a resumed run) and calling ``save(step, log)`` at every ``resume_steps`` step."""
    at = set(curve_steps(spec.steps, spec.eval_points))
    save_at = set(resume_steps(spec))
    start = time.perf_counter() - log.elapsed_s
    model.train()
    # The next batch is drawn on a second thread while this step runs (torch's generators release
    # the GIL); a batch is a pure function of (spec, step), so the stream is the same either way,
    # and a resumed run draws exactly the batches the uninterrupted one would have.
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming = prefetch.submit(checked_batch, spec, first_step)
        for step in range(first_step, spec.steps):
            batch = upcoming.result()
            if step + 1 < spec.steps:
                upcoming = prefetch.submit(checked_batch, spec, step + 1)
            set_rate(step)
            value = train_step(*batch)
            if not math.isfinite(value):
                print(f"step {step + 1}: non-finite loss {value}; stopping", flush=True)
                break
            log.losses.append(value)
            if step + 1 in at:
                t0 = time.perf_counter()
                model.eval()
                scores = held_out.score(model, device, autocast, CURVE_EXAMPLES)
                examples = (step + 1) * spec.batch_size
                log.curve.append([examples, _accuracy(scores)])
                for name, (c, n, _) in scores.items():
                    log.slice_curves[name].append([examples, c / max(n, 1)])
                if routes(model):
                    log.router_curve.append([examples, *router_point(model, held_out, device, autocast)])
                stop = _stops(spec, scores, held_out, model, device, autocast)
                model.train()
                log.eval_s += time.perf_counter() - t0
                print(_progress_line(spec, step + 1, value, scores, time.perf_counter() - start), flush=True)
                if stop:
                    log.stopped_at = step + 1
                    print(f"stopped early: {spec.stop_slice} reached {spec.stop_accuracy}", flush=True)
                    break
            if step + 1 in save_at:
                log.elapsed_s = time.perf_counter() - start
                save(step + 1, log)
    log.elapsed_s = time.perf_counter() - start
    return log


# --------------------------------------------------------------------------------------------
# Resume points: a run cut short (a GPU call's time limit, a killed process) goes on from its
# last point instead of starting over. The point holds the model, AdamW's state, the RNG states
# and the log so far; batches are a pure function of (spec, step), so the resumed run trains on
# exactly what the uninterrupted one would have. Saved with the checkpoint protocol of
# ``mossnet.rundir.atomic`` (a point is replaced whole or not at all), in safetensors + JSON.

RESUME_PART = "resume"  # RUN_DIR/resume/state.{json,safetensors}
RESUME_POINTS = 10  # when the run has no accuracy curve to save at


def resume_steps(spec: MQARRunSpec) -> list[int]:
    """The 1-based steps after which a resume point is saved: the accuracy curve's steps (or
    ``RESUME_POINTS`` even ones when there is no curve), never the last step (the result follows)."""
    return [s for s in curve_steps(spec.steps, spec.eval_points or RESUME_POINTS) if s < spec.steps]


def _run_dir(spec: MQARRunSpec) -> Path:
    return Path(spec.result).parent


def _settings_key(spec: MQARRunSpec) -> str:
    import json

    return json.dumps(spec.settings(), sort_keys=True)


def save_resume_point(spec: MQARRunSpec, step: int, model, opt, log: TrainLog) -> None:
    from mossnet.rundir import atomic
    from mossnet.train.optim import float_learning_rates
    from mossnet.train.tree_codec import capture_rng, dump_tree

    state = {
        "settings": _settings_key(spec), "step": step,
        # copies: a tied embedding and LM head share one tensor, which safetensors refuses twice
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": float_learning_rates(opt.state_dict()), "rng": capture_rng(),
        "log": {"losses": log.losses, "curve": log.curve, "slice_curves": log.slice_curves,
                "eval_s": log.eval_s, "elapsed_s": log.elapsed_s, "resumed_at": log.resumed_at,
                "router_curve": log.router_curve},
    }
    tmp = atomic.begin_save(_run_dir(spec), announce=_say)
    try:
        (tmp / RESUME_PART).mkdir()
        dump_tree(state, tmp / RESUME_PART / "state")  # copies to the host, which wait for the device
        atomic.commit_save(_run_dir(spec), tmp, parts=(RESUME_PART,))
    except BaseException:
        atomic.abort_save(tmp)
        raise


def load_resume_point(spec: MQARRunSpec) -> dict[str, Any] | None:
    """The run's last resume point, or None. One that cannot be read, or that was made with other
    settings, is removed (with a line in the log) and the run starts over: never a crash, never a
    point of another run reused."""
    from mossnet.errors import CheckpointError
    from mossnet.rundir import atomic
    from mossnet.train.tree_codec import load_tree

    root = _run_dir(spec)
    if not root.is_dir():
        return None
    atomic.recover(root, announce=_say)
    where = root / RESUME_PART
    if not where.is_dir():
        return None
    try:
        state = load_tree(where / "state")
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise CheckpointError(f"{where} holds no step")
    except (CheckpointError, ValueError, TypeError, KeyError) as err:
        _say(f"the resume point {where} cannot be read ({err}); starting over")
        discard_resume_point(spec)
        return None
    if state.get("settings") != _settings_key(spec):
        _say(f"the resume point {where} was made with other settings; starting over")
        discard_resume_point(spec)
        return None
    return state


def discard_resume_point(spec: MQARRunSpec) -> None:
    """Remove the run's resume point (once its result is written)."""
    import shutil

    shutil.rmtree(_run_dir(spec) / RESUME_PART, ignore_errors=True)


def _resume(spec: MQARRunSpec, state: dict[str, Any], model, opt, log: TrainLog) -> int:
    """Take a resume point into a freshly built run; returns the step to go on from (0 when the
    point does not fit this model, which is then left as built and the point dropped)."""
    from mossnet.train.optim import restore_implementation
    from mossnet.train.tree_codec import restore_rng

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        if {k: tuple(v.shape) for k, v in state["model"].items()} != shapes:
            raise ValueError("its parameters are not this model's")
        opt.load_state_dict(state["optimizer"])  # checks the groups before it changes anything
    except (ValueError, KeyError, TypeError) as err:
        _say(f"the resume point of {spec.name} does not fit this run ({err}); starting over")
        discard_resume_point(spec)
        return 0
    model.load_state_dict(state["model"])
    restore_implementation(opt)  # this run's AdamW flags (eager or captured), a float lr
    restore_rng(state["rng"])
    saved = state["log"]
    log.losses = [float(v) for v in saved["losses"]]
    log.curve = [list(point) for point in saved["curve"]]
    log.slice_curves.update({name: [list(p) for p in points] for name, points in saved["slice_curves"].items()})
    log.eval_s, log.elapsed_s = float(saved["eval_s"]), float(saved["elapsed_s"])
    log.resumed_at = [*saved["resumed_at"], state["step"]]
    log.router_curve = [list(point) for point in saved.get("router_curve", [])]  # absent: a point of an older run
    _say(f"resumed at step {state['step']} from the run's resume point")
    return state["step"]


def _say(text: str) -> None:
    print(text, flush=True)


def _progress_line(spec: MQARRunSpec, step: int, loss: float, scores, elapsed_s: float) -> str:
    """One line of the run's log per curve point (runs are long, and the log is all one sees)."""
    slices = " ".join(f"{name} {c / max(n, 1):.3f}" for name, (c, n, _) in scores.items())
    return (f"step {step}/{spec.steps}  loss {loss:.4f}  accuracy {_accuracy(scores):.3f} ({slices})  "
            f"{elapsed_s:.0f} s, {step / max(elapsed_s, 1e-9):.1f} steps/s")


def execute_mqar(spec: MQARRunSpec) -> dict[str, Any]:
    import torch

    from mossnet.runtime import autocast_factory, resolve_device
    from mossnet.train.optim import build_optimizer, lr_at, set_lr

    from .common import set_threads

    set_threads(spec.threads)
    device = resolve_device(spec.device)
    autocast = autocast_factory(device, spec.dtype)  # for the evaluations
    config, cls, kind = build_model(spec)
    torch.manual_seed(spec.seed)
    model = cls(config).to(device)
    info = describe(kind, model, config, max_len(spec))
    opt = build_optimizer(model, spec.lr, spec.weight_decay, (0.9, 0.95))
    held_out = HeldOut(spec)
    if spec.stop_slice and spec.stop_slice not in held_out.sets:
        raise ValueError(f"stop_slice {spec.stop_slice!r} is not a slice of this run ({sorted(held_out.sets)})")
    log = TrainLog(slice_curves={name: [] for name in held_out.sets})
    point = load_resume_point(spec)
    first_step = _resume(spec, point, model, opt, log) if point is not None else 0
    # built after a resume: the captured step takes over the optimizer state as it stands
    train_step = _train_step(model, opt, device, spec.dtype, spec.cuda_graph, max_queries(spec))

    def set_rate(step: int) -> None:  # warmup, then cosine to 10%
        set_lr(opt, lr_at(step, spec.lr, spec.warmup_steps, spec.steps, 0.1))

    def save(step: int, log: TrainLog) -> None:
        save_resume_point(spec, step, model, opt, log)

    log = _train(spec, model, train_step, set_rate, held_out, device, autocast, log, first_step, save)
    train_s = log.elapsed_s - log.eval_s

    model.eval()
    scores = held_out.score(model, device, autocast)
    count = sum(n for _, n, _ in scores.values())
    every = max(1, spec.steps // 50)
    losses = log.losses
    return {
        # every setting that changes the answer is recorded, so that a re-run with other settings
        # is refused instead of silently reusing this result (runner.check_existing)
        **spec.settings(), "name": spec.name, "label": spec.label or spec.arch,
        "params": info,
        "accuracy": _accuracy(scores),
        "eval_loss": sum(loss for _, _, loss in scores.values()) / max(count, 1),
        "eval_queries": count,
        "slices": {name: {"accuracy": c / max(n, 1), "loss": loss / max(n, 1), "queries": n}
                   for name, (c, n, loss) in scores.items()},
        "accuracy_curve": log.curve,
        "slice_curves": log.slice_curves if spec.mixture else {},
        "examples_to_90": examples_to(log.curve, 0.9),
        "router_curve": log.router_curve,
        "stopped_at_step": log.stopped_at,
        "diverged": len(losses) < spec.steps and log.stopped_at is None,
        "train_loss_curve": [[i + 1, losses[i]] for i in range(every - 1, len(losses), every)],
        "train_s": train_s,
        "resumed_at_steps": log.resumed_at,
        "examples_per_s": spec.batch_size * len(losses) / max(train_s, 1e-9),
        "device": str(device),
        "cuda_graph": spec.cuda_graph,
        "torch_threads": torch.get_num_threads(),
    }
