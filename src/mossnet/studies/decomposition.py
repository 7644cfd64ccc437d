"""The decomposition study: which part of MossNet's design costs or pays, at equal active parameters.

Every variant is a MossNet config derived from one reference (a preset plus ``--model``
overrides: E experts of top-k, head width P, state N) with a **dense** SwiGLU MLP. Variant E, the
reference's time mixer with an MLP of 8/3 ``d_model``, sets the active parameter count; every
other variant reaches it by solving its MLP width (the knob), counted on the real model (meta
device). At the GPU study's reference (E=4, k=2, P=64, N=32):

====  ======================================================================================
A     single head: one expert of width k*P (the same active value width), state N
B     multi-value: k heads of width P, every token through all (dense), one shared B/C
      projection (``ssm_share_bc``): one attention "head" with k decays, Mamba-2's pattern
C     dense k heads of width P (E=k, top-k of k)
D     dense E narrow heads of width k*P/E (top-E of E)
E     MossNet: E experts of width P, top-k
F     E with ``state_update="all"`` (every expert scans every token; the router gates outputs)
G     E at A's total state: N solved so that the per-layer cache (SSM states and conv windows)
      comes nearest A's
H     E with ``ssm_conv_placement="shared"`` (one conv over the full sequence before routing)
====  ======================================================================================

The dense variants (B, C, D: top-k of k) keep the router and its softmax gate: a dense head is
weighted by its gate, as in MossNet.

Protocol: every variant on the same seeds (3), where a seed sets the initialisation and the
order of the training windows, so that one seed's runs see the same batches (paired
differences). A learning-rate sweep on seed 0 runs A, C and E (:data:`SWEPT`); every other
variant inherits the best rate of its nearest swept variant (:data:`LR_FROM`). Decision rule,
stated before any run: a gap between two variants counts only if its mean over seeds exceeds
twice the standard deviation of the per-seed paired differences.

``python -m mossnet.studies.decomposition`` prints the config table (RESULTS.md, "Decomposition
study (planned)").
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mossnet.errors import ConfigError
from mossnet.models.parameter_count import state_bytes_per_layer

from .arch_configs import (_solve_mlp_width, config_accepts, mossnet_active, reference_config,
                           solve_state_dim)

LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
SWEPT = ("A", "C", "E")
LR_FROM = {"A": "A", "B": "C", "C": "C", "D": "C", "E": "E", "F": "E", "G": "E", "H": "E"}
# config keys a variant needs from MossNetConfig (switches of spec section 7)
NEEDS = {"B": ("ssm_share_bc",), "H": ("ssm_conv_placement",)}
DENSE_MLP = dict(mlp_experts=1, mlp_top_k=1, mlp_shared_expert=False)
# What each variant isolates (RESULTS.md, "Decomposition study"): (variant, the one it is read
# against). The report prints these pairs' per-seed differences beside the differences to A.
CONTRASTS = (("C", "A"),  # two heads against one of the same total width
             ("B", "C"),  # one B/C shared by the heads against one per head
             ("D", "C"),  # head width: four of P=32 against two of P=64
             ("E", "C"),  # routing 2 of 4 experts against running 2 always
             ("F", "E"),  # routing the state update, or updating every expert's state
             ("G", "E"),  # E's extra state: E cut to A's state size
             ("G", "A"),  # routed experts at the single head's state size
             ("H", "E"))  # the conv over the true neighbours against over the routed rows only


def _shape(ref) -> tuple[int, int, int, int]:
    return ref.ssm_experts, ref.ssm_top_k, ref.ssm_head_dim, ref.ssm_state_dim


def time_mixer(letter: str, ref) -> dict[str, Any]:
    """The time-mixer overrides of variant ``letter`` relative to the reference ``ref``."""
    E, k, P, N = _shape(ref)
    if letter == "D" and (k * P) % E:
        raise ConfigError(f"variant D needs k*P ({k}*{P}) divisible by E ({E})")
    if letter == "G":
        single = ref.__class__(**{**ref.to_dict(), **time_mixer("A", ref)})
        return dict(ssm_state_dim=solve_state_dim(ref, state_bytes_per_layer(single)))
    return {
        "A": dict(ssm_experts=1, ssm_top_k=1, ssm_head_dim=k * P),
        "B": dict(ssm_experts=k, ssm_top_k=k, ssm_share_bc=True),
        "C": dict(ssm_experts=k, ssm_top_k=k),
        "D": dict(ssm_experts=E, ssm_top_k=E, ssm_head_dim=k * P // E),
        "E": {},
        "F": dict(state_update="all"),
        "H": dict(ssm_conv_placement="shared"),
    }[letter]


def label(letter: str, ref) -> str:
    E, k, P, N = _shape(ref)
    return {
        "A": f"A: single head (P={k * P})",
        "B": f"B: multi-value, {k} heads share B/C (dense)",
        "C": f"C: dense {k} heads (P={P})",
        "D": f"D: dense {E} narrow heads (P={k * P // E})",
        "E": f"E: MossNet E={E}, top-{k}",
        "F": 'F: E, state_update="all"',
        "G": f"G: E at A's state (N={time_mixer('G', ref)['ssm_state_dim']})",
        "H": "H: E, shared conv",
    }[letter]


def available(letter: str) -> bool:
    """Whether this checkout's MossNetConfig has the switches variant ``letter`` needs."""
    return config_accepts(*NEEDS.get(letter, ()))


def dense_reference(ref):
    """Variant E: the reference's time mixer with a dense SwiGLU of 8/3 d_model."""
    from mossnet.train.baselines import llama_mlp_width

    return ref.__class__(**{**ref.to_dict(), **DENSE_MLP, "mlp_hidden_dim": llama_mlp_width(ref.d_model)})


def variant_overrides(letter: str, ref) -> dict[str, Any]:
    """Overrides of the reference config ``ref`` that make variant ``letter``: the dense MLP,
    the time mixer, and the MLP width solved to E's active parameters."""
    if letter not in LETTERS:
        raise ConfigError(f"unknown decomposition variant {letter!r}; choose from {', '.join(LETTERS)}")
    if not available(letter):
        raise ConfigError(f"variant {letter} needs MossNetConfig field(s) {', '.join(NEEDS[letter])}, "
                          "which this checkout does not have yet")
    anchor = dense_reference(ref)
    over = {**DENSE_MLP, "mlp_hidden_dim": anchor.mlp_hidden_dim, **time_mixer(letter, ref)}
    if letter != "E":
        base = ref.__class__(**{**ref.to_dict(), **over})
        over["mlp_hidden_dim"] = _solve_mlp_width(base, mossnet_active(anchor))
    return over


def variant_config(letter: str, ref):
    return ref.__class__(**{**ref.to_dict(), **variant_overrides(letter, ref)})


def config_row(letter: str, ref, tokens: int) -> dict[str, Any]:
    """One row of the config table, every count from the real model (meta device)."""
    row = {"variant": letter, "label": label(letter, ref), "lr_from": LR_FROM[letter], "tokens": tokens}
    if not available(letter):
        return {**row, "missing": NEEDS[letter]}
    import torch

    from mossnet import MossNetForCausalLM
    from mossnet.models.parameter_count import parameter_counts

    cfg = variant_config(letter, ref)
    with torch.device("meta"):
        counts = parameter_counts(MossNetForCausalLM(cfg))
    return {**row, "E": cfg.ssm_experts, "k": cfg.ssm_top_k, "P": cfg.ssm_head_dim, "N": cfg.ssm_state_dim,
            "state_update": cfg.state_update, "share_bc": bool(getattr(cfg, "ssm_share_bc", False)),
            "conv": getattr(cfg, "ssm_conv_placement", "expert"), "mlp_width": cfg.mlp_hidden_dim,
            "active": counts["active"], "total": counts["total"], "state_bytes": state_bytes_per_layer(cfg),
            "knob": "reference (MLP 8/3 d)" if letter == "E" else "MLP width"}


def config_table(ref, tokens: int, letters=LETTERS) -> str:
    """The Markdown config table of the variants (one row each)."""
    head = ("| variant | E | k | P | N | state_update | share B/C | conv | MLP width | active | total | "
            "state / layer | tokens / run | knob | lr from |")
    lines = [head, "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for letter in letters:
        r = config_row(letter, ref, tokens)
        if "missing" in r:
            lines.append(f"| {r['label']} | needs `{', '.join(r['missing'])}` (not in this checkout: rerun the "
                         f"table after it lands) | | | | | | | | | | | {tokens:,} | MLP width | {r['lr_from']} |")
            continue
        lines.append(f"| {r['label']} | {r['E']} | {r['k']} | {r['P']} | {r['N']} | {r['state_update']} | "
                     f"{'yes' if r['share_bc'] else 'no'} | {r['conv']} | {r['mlp_width']} | {r['active']:,} | "
                     f"{r['total']:,} | {r['state_bytes'] / 1024:.1f} KiB | {r['tokens']:,} | {r['knob']} | "
                     f"{r['lr_from']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- specs
def run_id(letter: str, seed: int, lr: float) -> str:
    return f"{letter}-lr{lr:g}-s{seed}"


def _spec(budget, out, letter: str, ref, ref_over: dict, seed: int, lr: float):
    return budget.spec("decomposition", out, run_id(letter, seed, lr), letter, label(letter, ref), "mossnet",
                       "mossnet", {**ref_over, **variant_overrides(letter, ref)}, seed, lr)


def sweep_specs(budget, out, ref, ref_over: dict, letters, lrs) -> list:
    """Seed 0 of every swept variant among ``letters``, at every rate of ``lrs``."""
    return [_spec(budget, out, x, ref, ref_over, 0, lr) for x in SWEPT if x in letters for lr in lrs]


def best_rates(results: list[dict[str, Any]]) -> dict[str, float]:
    """Swept variant -> its best learning rate on seed 0 (lowest final validation loss among the
    runs that did not diverge; the lower rate on a tie)."""
    best: dict[str, tuple[float, float]] = {}
    for r in results:
        if r.get("seed") != 0 or r.get("diverged") or r.get("val_loss") is None or r["variant"] not in SWEPT:
            continue
        key = (r["val_loss"], r["lr"])
        if r["variant"] not in best or key < best[r["variant"]]:
            best[r["variant"]] = key
    return {v: lr for v, (_, lr) in best.items()}


def main_specs(budget, out, ref, ref_over: dict, letters, seeds, rates: dict[str, float]) -> list:
    """Every variant on every seed at the best rate of its nearest swept variant (variants whose
    swept neighbour has no finished run yet are left out)."""
    return [_spec(budget, out, x, ref, ref_over, seed, rates[LR_FROM[x]])
            for x in letters if LR_FROM[x] in rates for seed in seeds]


def check_letters(letters) -> tuple[str, ...]:
    letters = tuple(letters or LETTERS)
    unknown = [x for x in letters if x not in LETTERS]
    if unknown:
        raise ConfigError(f"unknown decomposition variant(s) {', '.join(unknown)}; choose from {', '.join(LETTERS)}")
    missing = [LR_FROM[x] for x in letters if LR_FROM[x] not in letters]
    if missing:
        raise ConfigError(f"variants {', '.join(letters)} inherit their learning rate from "
                          f"{', '.join(sorted(set(missing)))}: include it")
    return letters


# ---------------------------------------------------------------------------------------- CLI
GPU_MODEL = dict(d_model=256, n_layers=6, ssm_head_dim=64, ssm_state_dim=32)


def main(argv: list[str] | None = None) -> int:
    """Print the config table (defaults: the GPU sitting of ``scripts/gpu_studies.sh``)."""
    from mossnet.cli.argtypes import positive_int

    from .study import parse_model_overrides

    p = argparse.ArgumentParser(prog="python -m mossnet.studies.decomposition", description=main.__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=positive_int, default=8192)
    p.add_argument("--model", nargs="*", default=[f"{k}={v}" for k, v in GPU_MODEL.items()], metavar="KEY=VALUE")
    p.add_argument("--budget-tokens", type=positive_int, default=10_000_000)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=1024)
    args = p.parse_args(argv)
    ref = reference_config(args.preset, args.vocab, parse_model_overrides(args.model))
    tokens = max(1, args.budget_tokens // (args.batch_size * args.seq_len)) * args.batch_size * args.seq_len
    print(config_table(ref, tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
