"""The language-model study and the ablations: equal data, tokenizer, token budget, batch,
schedule and optimizer for every model; only the architecture changes.

Every run is one ``mossnet.train`` run (:func:`mossnet.train.loop.train`) of the same
:class:`~mossnet.train.config.TrainConfig` except ``arch``/``model``, written under
``OUT/runs/<variant>-s<seed>/train`` (a normal run directory with ``logs/metrics.jsonl``),
and summarised in ``OUT/runs/<variant>-s<seed>/result.json``. The seed sets both the
initialisation and the order of the training windows, so that, for one seed, every architecture
sees exactly the same batches. A run whose result JSON exists is skipped; one interrupted after
a checkpoint resumes from it.

Variants
--------
``lm`` study: the architectures of :mod:`mossnet.studies.arch_configs` (MossNet, single-head
SSM, single-head SSM + MoE MLP, Llama, Mamba-2), matched to the reference MossNet's active
parameters.

``decomposition`` study: :mod:`mossnet.studies.decomposition` (variants A-H), built with the
same :class:`LMBudget`.

``ablations`` study: MossNet with one choice changed at a time (:data:`ABLATIONS`). Choices of
the MLP keep the active parameters matched (the expert width is solved); choices of the SSM
change the active parameters and the state by nature, and the table reports both.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mossnet.rundir import LOGS, MODEL, TRAINER

from .arch_configs import (ARCHS, LABELS, MOSSNET_VARIANTS, _solve_mlp_width, captures, describe_arch,
                           mossnet_active, reference_config, trainer_arch, variant_overrides)
from .specs import LMRunSpec

# name -> (label, overrides of the reference MossNet, solve the MLP width to match active params)
ABLATIONS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "reference": ("MossNet reference (routed, E=4, k=2, MoE MLP)", {}, False),
    "state_all": ('state_update="all" (every expert scans every token)', {"state_update": "all"}, False),
    "ssm_e8_k2": ("8 SSM experts, top-2 (same active, 2x state)", {"ssm_experts": 8, "ssm_top_k": 2}, False),
    "ssm_e4_k1": ("4 SSM experts, top-1 (half the active SSM)", {"ssm_top_k": 1}, False),
    "ssm_e4_k4": ("4 SSM experts, top-4 (every expert, router-weighted)", {"ssm_top_k": 4}, False),
    "mlp_dense": ("MoE MLP off (dense SwiGLU, matched active)", {"mlp_experts": 1, "mlp_top_k": 1}, True),
    "shared_expert": ("+ shared MLP expert (matched active)", {"mlp_shared_expert": True}, True),
}


def variants(study: str, ref, archs=None) -> dict[str, dict[str, Any]]:
    """name -> {"label", "trainer_arch", "family", "overrides"} (overrides of the reference)."""
    out: dict[str, dict[str, Any]] = {}
    if study == "lm":
        for arch in archs or ARCHS:
            over = variant_overrides(arch, ref) if arch in MOSSNET_VARIANTS else {}
            out[arch] = {"label": LABELS[arch], "trainer_arch": trainer_arch(arch), "family": arch, "overrides": over}
    elif study == "ablations":
        target = mossnet_active(ref)
        for name in archs or ABLATIONS:
            if name not in ABLATIONS:
                raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
            label, over, match = ABLATIONS[name]
            over = dict(over)
            if match:
                base = ref.__class__(**{**ref.to_dict(), **over})
                over["mlp_hidden_dim"] = _solve_mlp_width(base, target)
            out[name] = {"label": label, "trainer_arch": "mossnet", "family": "mossnet", "overrides": over}
    else:
        raise ValueError(f"unknown study {study!r}")
    return out


def run_name(variant: str, seed: int, lr: float, reference_lr: float) -> str:
    """``<variant>-s<seed>`` at the shared learning rate, ``<variant>-lr<lr>-s<seed>`` in a sweep."""
    return f"{variant}-s{seed}" if lr == reference_lr else f"{variant}-lr{lr:g}-s{seed}"


@dataclass(frozen=True)
class LMBudget:
    """What every run of an LM study shares: data, tokens, batch, schedule, evaluation."""

    data: str
    preset: str = "tiny"
    budget_tokens: int = 163_840
    batch_size: int = 8
    seq_len: int = 128
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    eval_points: int = 5
    eval_tokens: int = 8192
    probe_tokens: int = 0  # > 0: also run the decomposition probes (lm_probes) on this many tokens
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0
    cuda_graph: bool = False

    @property
    def max_steps(self) -> int:
        return max(1, self.budget_tokens // (self.batch_size * self.seq_len))

    def spec(self, study: str, out: Path, run_id: str, variant: str, label: str, family: str, trainer_arch: str,
             model: dict[str, Any], seed: int, lr: float) -> LMRunSpec:
        """The spec of run ``run_id`` (written under ``out/runs/run_id``)."""
        steps = self.max_steps
        run = Path(out) / "runs" / run_id
        return LMRunSpec(
            name=f"{study}/{run_id}", result=str(run / "result.json"), train_dir=str(run / "train"),
            data=str(self.data),
            study=study, variant=variant, label=label, family=family, trainer_arch=trainer_arch, model=dict(model),
            preset=self.preset, seed=seed, lr=lr, seq_len=self.seq_len, batch_size=self.batch_size, max_steps=steps,
            warmup_steps=max(1, int(round(self.warmup_frac * steps))), weight_decay=self.weight_decay,
            min_lr_ratio=self.min_lr_ratio, eval_interval=max(1, steps // max(1, self.eval_points)),
            eval_tokens=self.eval_tokens, ckpt_interval=max(1, steps // 4), probes=self.probe_tokens > 0,
            probe_tokens=self.probe_tokens, device=self.device, dtype=self.dtype, threads=self.threads,
            cuda_graph=bool(self.cuda_graph) and captures(trainer_arch))


def make_specs(study: str, out: str | Path, data: str, preset: str = "tiny", archs=None, seeds=(0, 1),
               budget_tokens: int = 163_840, batch_size: int = 8, seq_len: int = 128, lr: float = 3e-3,
               lr_sweep=(), sweep_seeds: int = 1, warmup_frac: float = 0.05, weight_decay: float = 0.1,
               min_lr_ratio: float = 0.1, eval_points: int = 5, eval_tokens: int = 8192,
               model_overrides: dict | None = None, device: str = "auto", dtype: str = "auto", threads: int = 0,
               cuda_graph: bool = False) -> list[LMRunSpec]:
    """One spec per (variant, learning rate, seed): every variant at the shared ``lr`` on all
    ``seeds``, and at each other rate of ``lr_sweep`` on the first ``sweep_seeds`` seeds (the usual
    protocol: tune on one seed, compare on several)."""
    from mossnet.data import read_manifest

    budget = LMBudget(data=str(data), preset=preset, budget_tokens=budget_tokens, batch_size=batch_size,
                      seq_len=seq_len, warmup_frac=warmup_frac, weight_decay=weight_decay, min_lr_ratio=min_lr_ratio,
                      eval_points=eval_points, eval_tokens=eval_tokens, device=device, dtype=dtype, threads=threads,
                      cuda_graph=cuda_graph)
    vocab = int(read_manifest(data)["vocab_size"])
    ref_over = dict(model_overrides or {})
    ref = reference_config(preset, vocab, ref_over)
    specs = []
    rates = [(lr, tuple(seeds))] + [(x, tuple(seeds)[:sweep_seeds]) for x in dict.fromkeys(lr_sweep) if x != lr]
    for name, v in variants(study, ref, archs).items():
        for run_lr, run_seeds in rates:
            for seed in run_seeds:
                specs.append(budget.spec(study, out, run_name(name, seed, run_lr, lr), name, v["label"], v["family"],
                                         v["trainer_arch"], {**ref_over, **v["overrides"]}, seed, run_lr))
    return specs


def _thin(records: list, at_most: int) -> list:
    """Every k-th record (the last one always kept), so that a result JSON stays small."""
    if len(records) <= at_most:
        return records
    every = -(-len(records) // at_most)  # ceil
    kept = records[every - 1::every]
    return kept if kept[-1] is records[-1] else kept + records[-1:]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_config(spec: LMRunSpec, train_dir: Path):
    """The run's model config: its checkpoint's, or (a run that diverged before its first
    checkpoint) the one the trainer built."""
    from transformers import AutoConfig

    import mossnet.models.mossnet  # noqa: F401  (registers MossNetConfig with AutoConfig)
    from mossnet.data import read_manifest
    from mossnet.train.baselines import build_model_config

    if (train_dir / MODEL / "config.json").is_file():
        return AutoConfig.from_pretrained(train_dir / MODEL)
    vocab = int(read_manifest(spec.data)["vocab_size"])
    return build_model_config(spec.trainer_arch, spec.preset, vocab, dict(spec.model), spec.seq_len)


def _train_config(spec: LMRunSpec):
    from mossnet.train import checkpoint as ckpt
    from mossnet.train.config import TrainConfig

    train_dir = Path(spec.train_dir)
    cfg = TrainConfig(
        arch=spec.trainer_arch, preset=spec.preset, model=dict(spec.model), data=spec.data, out=str(train_dir),
        seq_len=spec.seq_len, batch_size=spec.batch_size, grad_accum=1, max_steps=spec.max_steps, lr=spec.lr,
        min_lr_ratio=spec.min_lr_ratio, warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay,
        eval_interval=spec.eval_interval, eval_tokens=spec.eval_tokens, ckpt_interval=spec.ckpt_interval,
        sample_tokens=0, tensorboard=False, progress=False, plot=False, seed=spec.seed, device=spec.device,
        dtype=spec.dtype, num_threads=spec.threads or 0, cuda_graph=spec.cuda_graph,
    )
    if (train_dir / TRAINER / ckpt.STATE_FILE).is_file():
        cfg.resume = str(train_dir)  # an interrupted run: continue from its last checkpoint
    cfg.validate()
    return cfg


def _probe(spec: LMRunSpec) -> dict[str, Any]:
    """The decomposition metrics (``lm_probes``) of the run's final model on the validation split."""
    from mossnet.data.token_store import open_split
    from mossnet.rundir.load import load_model
    from mossnet.runtime import autocast_factory, resolve_device

    from .lm_probes import run_probes

    device = resolve_device(spec.device)
    model = load_model(spec.train_dir, device=device)
    tokens = open_split(spec.data, "val")
    return run_probes(model, tokens, spec.seq_len, spec.probe_tokens, device, autocast_factory(device, spec.dtype))


def execute_lm(spec: LMRunSpec) -> dict[str, Any]:
    import torch

    from mossnet.runtime import resolve_device
    from mossnet.train.loop import TrainingDiverged, train

    train_dir = Path(spec.train_dir)
    cfg = _train_config(spec)
    t0 = time.perf_counter()
    diverged = None
    try:
        result = train(cfg)
    except TrainingDiverged as err:  # a result too (e.g. a sweep's highest learning rate): not retried
        diverged, result = str(err), None
    wall = time.perf_counter() - t0
    if result is not None and result.status != "done":
        raise RuntimeError(f"{spec.name}: training stopped ({result.status}) at step {result.step}")

    records = _read_jsonl(train_dir / LOGS / "metrics.jsonl")
    tps = spec.batch_size * spec.seq_len
    curve = {}
    for r in records:
        if r.get("split") == "val":
            curve[int(r["step"])] = float(r["loss"])  # a resumed run may repeat a step: keep the last
    train_recs = [r for r in records if r.get("split") == "train"]
    last = train_recs[-1] if train_recs else {}
    tokens_per_s = last["tokens"] / last["elapsed_s"] if last.get("elapsed_s") else float("nan")
    final = result.final.get("model", {}) if result else {}
    config = _run_config(spec, train_dir)
    params = describe_arch(spec.family if spec.family in ARCHS else "mossnet", config, spec.seq_len)
    return {
        **spec.settings(), "name": spec.name, "label": spec.label,
        "tokens": spec.tokens,
        "params": params,
        "val_loss": final.get("loss"), "val_perplexity": final.get("perplexity"),
        "val_bits_per_byte": final.get("bits_per_byte"), "val_tokens": final.get("tokens"),
        "bigram": result.final.get("bigram") if result else None,
        "diverged": diverged,
        "probe_metrics": _probe(spec) if spec.probes and diverged is None else None,
        "val_curve": [[step * tps, loss] for step, loss in sorted(curve.items())],
        "train_curve": [[int(r["step"]) * tps, float(r["ce"])] for r in _thin(train_recs, 200)],
        "tokens_per_s": tokens_per_s,
        "train_s": last.get("elapsed_s"),
        "wall_s": wall,
        "device": str(resolve_device(spec.device)),
        "cuda_graph": spec.cuda_graph,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
