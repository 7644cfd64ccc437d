"""MQAR calibrated before it ranks: the attention gate, then a ranking at matched total state.

Both studies train on Zoology's task (``mqar_data`` defaults: vocabulary 8,192, values without
replacement, power-law query gaps, random filler) and its training mixture of (64, 4),
(128, 8), (256, 16), (256, 32) and (256, 64) slices, and score every slice.

**Gate** (study ``mqar_gate``). Attention solves MQAR in Zoology; if ours does not, the task or
the training is wrong, and no ranking built on it means anything. The gate passes when Zoology's
own attention model (``attention_lm``: 2 layers, 1 head, no MLP, learned positions, dropout 0.1,
d=64) reaches >= 0.99 on the (128, 8) slice at its best learning rate. The :func:`ladder` then
moves one factor at a time toward our Llama baseline (cumulative rungs, the last one
transformers' Llama itself); the first rung that fails names the factor that blocks attention.
Every rung stops early once the gate slice reaches 0.99 (Zoology's early stopping).

**Ranking** (study ``mqar_rank``; run only once the gate passes). A single head, dense 2 heads
and MossNet (E=4, top-2), all without MLP (``mlp_experts=0``) at the same d, the same active
value width (d/2) and, for each of two state sizes, the same total state per layer (SSM states
and conv windows, to the nearest state dim; :func:`rank_model`). The learning rate is swept on
seed 0; seeds 1 and 2 run at each cell's best rate; the report gives each slice's accuracy
against state bytes as mean ± sd over the 3 seeds.

``python -m mossnet.studies.mqar_calibration GATE_DIR`` prints the gate's verdict and exits 0 when
Zoology's attention passes (3 when it does not, 4 when there is no result yet).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mqar_data import slice_name
from .specs import MQARRunSpec

GATE_SLICE = slice_name(128, 8)
GATE_ACCURACY = 0.99
ZOOLOGY_ATTENTION = dict(heads=1, positions="learned", norm="layernorm", bias=True, dropout=0.1,
                         state_mixer="identity")
RANK_ARCHS = ("single_head", "dense_2_heads", "mossnet")


@dataclass(frozen=True)
class Rung:
    name: str
    change: str  # the factor this rung changes from the one before
    arch: str  # "attention" (attention_lm with ``options``) or "llama_plain"
    options: dict


def ladder(d_model: int) -> list[Rung]:
    """Zoology's attention, then one factor at a time toward our Llama (options cumulative)."""
    from mossnet.train.baselines import llama_mlp_width

    steps = [("zoology", "Zoology's attention (learned positions, LayerNorm, biases, dropout 0.1, 1 head, "
                         "Identity state mixer)", {}),
             ("no_dropout", "dropout 0.1 -> 0", {"dropout": 0.0}),
             ("rope", "learned positions -> RoPE", {"positions": "rope"}),
             ("rmsnorm", "LayerNorm with biases -> RMSNorm, no biases", {"norm": "rmsnorm", "bias": False,
                                                                        "norm_eps": 1e-6}),
             ("swiglu", "Identity state mixer -> SwiGLU MLP of 8/3 d", {"state_mixer": "swiglu",
                                                                       "mlp_hidden": llama_mlp_width(d_model)})]
    if d_model // min(64, d_model) > 1:
        steps.append(("heads", "1 head -> heads of width 64", {"heads": d_model // 64}))
    rungs, options = [], dict(ZOOLOGY_ATTENTION)
    for name, change, extra in steps:
        options = {**options, **extra}
        rungs.append(Rung(name, change, "attention", dict(options)))
    rungs.append(Rung("llama", "our model -> transformers' Llama (the same function; its initialisation)",
                      "llama_plain", {}))
    return rungs


@dataclass(frozen=True)
class MQARSchedule:
    """What every run of the gate or the ranking shares."""

    steps: int = 4000
    batch_size: int = 256
    vocab_size: int = 8192
    n_layers: int = 2
    eval_examples: int = 1000
    warmup_steps: int = 100
    eval_points: int = 20
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0
    cuda_graph: bool = False

    def spec(self, study: str, out, run_id: str, arch: str, variant: str, label: str, d_model: int,
             model: dict, lr: float, seed: int, stop: bool) -> MQARRunSpec:
        from .arch_configs import captures

        return MQARRunSpec(
            name=f"{study}/{run_id}", result=str(Path(out) / "runs" / run_id / "result.json"), study=study,
            arch=arch, variant=variant, label=label, d_model=d_model, n_layers=self.n_layers, model=dict(model),
            mixture="zoology", generator="zoology", vocab_size=self.vocab_size, seq_len=0, num_pairs=0,
            steps=self.steps, batch_size=self.batch_size, eval_examples=self.eval_examples,
            warmup_steps=self.warmup_steps, eval_points=self.eval_points, lr=lr, seed=seed,
            stop_slice=GATE_SLICE if stop else "", stop_accuracy=GATE_ACCURACY if stop else 0.0,
            device=self.device, dtype=self.dtype, threads=self.threads,
            cuda_graph=bool(self.cuda_graph) and captures(arch))


def gate_specs(out, schedule: MQARSchedule, d_model: int = 64, lrs=(3e-4, 1e-3, 3e-3), seeds=(0,),
               rungs=None) -> list[MQARRunSpec]:
    """Every rung of the ladder (or those named in ``rungs``) at every rate and seed."""
    chosen = [r for r in ladder(d_model) if not rungs or r.name in rungs]
    return [schedule.spec("mqar_gate", out, f"{r.name}-d{d_model}-lr{lr:g}-s{seed}", r.arch, r.name, r.change,
                          d_model, r.options, lr, seed, stop=True)
            for r in chosen for lr in lrs for seed in seeds]


def gate_verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rung (ladder order): the gate slice's accuracy at each rate (mean over seeds) and at
    the best one, and whether it passes; whether Zoology's attention passes, and the first rung
    that fails (the blocking factor) when an earlier one passed."""
    by_rung: dict[str, dict[float, list[float]]] = {}
    change: dict[str, str] = {}
    for r in results:
        by_rung.setdefault(r["variant"], {}).setdefault(r["lr"], []).append(r["slices"][GATE_SLICE]["accuracy"])
        change[r["variant"]] = r.get("label", "")
    order = [rung.name for rung in ladder(results[0]["d_model"])] if results else []
    rows = []
    for name in [n for n in order if n in by_rung]:
        means = {lr: sum(a) / len(a) for lr, a in sorted(by_rung[name].items())}
        best = max(means, key=means.get)
        rows.append({"rung": name, "change": change[name], "by_lr": means, "best_lr": best,
                     "accuracy": means[best], "passes": means[best] >= GATE_ACCURACY})
    zoology = next((r for r in rows if r["rung"] == "zoology"), None)
    blocked = None
    if zoology and zoology["passes"]:
        blocked = next((r["rung"] for r in rows if not r["passes"]), None)
    return {"rungs": rows, "zoology_passes": bool(zoology and zoology["passes"]), "blocked_by": blocked}


# ------------------------------------------------------------------------------------ ranking
def rank_model(arch: str, d_model: int, state_dim: int) -> dict[str, Any]:
    """MossNet overrides of a ranked model: MossNet is E=4 experts of top-2, P=d/4, N=state_dim;
    the single head (P=d/2) and the dense 2 heads (P=d/4) have the same active value width d/2
    and the state dim whose per-layer cache (SSM states and conv windows) comes nearest
    MossNet's. No MLP."""
    from mossnet import MossNetConfig

    from mossnet.models.parameter_count import state_bytes_per_layer

    from .arch_configs import solve_state_dim

    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4, got {d_model}")
    shapes = {"single_head": (1, 1, d_model // 2), "dense_2_heads": (2, 2, d_model // 4),
              "mossnet": (4, 2, d_model // 4)}
    if arch not in shapes:
        raise ValueError(f"unknown ranked model {arch!r}; choose from {RANK_ARCHS}")

    def config(name: str, n: int):  # the state does not depend on the MLP or the vocabulary
        E, k, P = shapes[name]
        return MossNetConfig(vocab_size=8, d_model=d_model, n_layers=1, ssm_experts=E, ssm_top_k=k, ssm_head_dim=P,
                             ssm_state_dim=n, mlp_experts=1, mlp_top_k=1)

    n = state_dim
    if arch != "mossnet":
        n = solve_state_dim(config(arch, state_dim), state_bytes_per_layer(config("mossnet", state_dim)))
    E, k, P = shapes[arch]
    return dict(ssm_experts=E, ssm_top_k=k, ssm_head_dim=P, ssm_state_dim=n, mlp_experts=0)


def mlp_free_supported() -> bool:
    """Whether this checkout's MossNetConfig accepts ``mlp_experts=0`` (no MLP)."""
    from mossnet import MossNetConfig
    from mossnet.errors import ConfigError

    try:
        MossNetConfig(mlp_experts=0)
    except (ConfigError, ValueError):
        return False
    return True


RANK_LABELS = {"single_head": "single head (E=1, P=d/2)", "dense_2_heads": "dense 2 heads (E=k=2, P=d/4)",
               "mossnet": "MossNet (E=4, k=2, P=d/4)"}


def _rank_spec(schedule, out, arch: str, d_model: int, n: int, lr: float, seed: int) -> MQARRunSpec:
    return schedule.spec("mqar_rank", out, f"{arch}-n{n}-d{d_model}-lr{lr:g}-s{seed}", "mossnet_plain", arch,
                         RANK_LABELS[arch], d_model, rank_model(arch, d_model, n), lr, seed, stop=False)


def rank_sweep_specs(out, schedule, archs=RANK_ARCHS, d_model: int = 64, state_dims=(16, 64),
                     lrs=(3e-3, 1e-2)) -> list[MQARRunSpec]:
    """Seed 0 of every (model, state size) cell at every rate."""
    return [_rank_spec(schedule, out, a, d_model, n, lr, 0) for n in state_dims for a in archs for lr in lrs]


def rank_best_rates(results: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(model, its state dim N) -> the rate of the best seed-0 overall accuracy (lower on a tie)."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for r in results:
        if r.get("seed") != 0 or r.get("diverged"):
            continue
        key = (r["variant"], r["model"]["ssm_state_dim"])
        score = (-r["accuracy"], r["lr"])
        if key not in best or score < best[key]:
            best[key] = score
    return {k: lr for k, (_, lr) in best.items()}


def rank_main_specs(out, schedule, rates: dict[tuple[str, int], float], archs=RANK_ARCHS, d_model: int = 64,
                    state_dims=(16, 64), seeds=(0, 1, 2)) -> list[MQARRunSpec]:
    """Every seed of every cell whose sweep has finished, at the cell's best rate."""
    cells = [(a, n, (a, rank_model(a, d_model, n)["ssm_state_dim"])) for n in state_dims for a in archs]
    return [_rank_spec(schedule, out, a, d_model, n, rates[key], seed)
            for a, n, key in cells if key in rates for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    from .report_paired import gate_table
    from .runner import read_json

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mossnet.studies.mqar_calibration GATE_STUDY_DIR", file=sys.stderr)
        return 2
    results = [read_json(p) for p in sorted(Path(argv[0]).glob("runs/*/result.json"))]
    if not results:
        print(f"no gate results under {argv[0]}/runs")
        return 4
    verdict = gate_verdict(results)
    print(gate_table(verdict))
    return 0 if verdict["zoology_passes"] else 3


if __name__ == "__main__":
    sys.exit(main())
