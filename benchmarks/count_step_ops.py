"""Where the launches of one training step come from, counted on the CPU: the offline stand-in
for ``profile_train_step.py`` (which needs a card).

    TRITON_INTERPRET=1 MOSSNET_TRITON_AUTOTUNE=0 python benchmarks/count_step_ops.py --model base

It builds the model's structure (layers, experts, top-k) at small widths, runs one training step
(forward, cross-entropy + router losses, backward) with the CUDA choices forced where the CPU
allows them (the Triton scan and fused kernels under Triton's interpreter, the grouped GEMM), and
counts every aten compute op (views and allocations excluded) and every Triton kernel launch. Each
op is attributed to the line of MossNet code that issued it: the forward's by its call stack, the
backward's by the forward line of the autograd node that ran it (anomaly mode records it).

A proxy, not a profile: on CUDA some aten ops take several kernels (a sort, a cumsum), autocast
adds casts, torch.rms_norm is one fused kernel where the CPU runs its composite, and the optimiser
is not counted. It answers "which lines issue the most launches", not "how many", nor "how long".
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layout_gate import MODELS  # noqa: E402  (one definition of the models)

# Ops that launch no kernel: views, metadata and allocation without a fill.
FREE = {
    "view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "as_strided", "alias", "detach",
    "unsqueeze", "squeeze", "permute", "split", "split_with_sizes", "unbind", "_reshape_alias", "reshape",
    "narrow", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "view_as",
    "unfold", "_local_scalar_dense", "sym_size", "sym_stride", "set_", "resize_", "diagonal", "movedim",
    "expand_as", "promote_types", "is_nonzero", "_has_compatible_shallow_copy_type",
}
SMALL_WIDTHS = dict(d_model=64, ssm_head_dim=16, ssm_state_dim=16, mlp_hidden_dim=64, vocab_size=256)


def _site(phase: str) -> str:
    """The MossNet line (file:line function) that issued the op running now."""
    if phase == "backward":
        node = torch._C._current_autograd_node()
        if node is None:
            return "backward: (engine)"
        text = "".join(node.metadata.get("traceback_", []))
        frames = [line.strip() for line in text.splitlines() if "/mossnet/" in line and line.strip().startswith("File")]
        where = frames[-1].split("/mossnet/")[-1].replace('", line ', ":").replace(", in ", " ") if frames else "?"
        return f"backward of {node.name()} @ {where}"
    for frame in reversed(traceback.extract_stack()):
        if "/mossnet/" in frame.filename and not frame.filename.endswith("ops/fused.py"):
            return f"{frame.filename.split('/mossnet/')[-1]}:{frame.lineno} {frame.name}"
    return "(outside mossnet)"


class _Census(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.phase = "forward"
        self.by_site = collections.Counter()
        self.by_op = collections.Counter()
        self.in_kernel = 0
        self.active = False

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not self.in_kernel and name not in FREE:  # the interpreter's own tensor traffic is not counted
            self.by_site[(self.phase, _site(self.phase))] += 1
            self.by_op[(self.phase, name)] += 1
        return func(*args, **(kwargs or {}))


def _count_triton_launches(census: _Census):
    """Count the interpreter's kernel launches into ``census``; returns the function that undoes it."""
    from triton.runtime import interpreter

    run = interpreter.InterpretedFunction.run

    def counted(self, *args, **kwargs):
        if census.active:
            census.by_site[(census.phase, f"triton kernel {self.fn.__name__}")] += 1
        census.in_kernel += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            census.in_kernel -= 1

    interpreter.InterpretedFunction.run = counted
    return lambda: setattr(interpreter.InterpretedFunction, "run", run)


def small_model(model_name: str, interpreting: bool):
    """``model_name``'s structure (layers, experts, top-k) at :data:`SMALL_WIDTHS`, in training
    mode, with the CUDA choices forced where the CPU allows them: the Triton scan and fused kernels
    when ``interpreting`` (Triton's interpreter; the numpy fix applied), else the chunked scan.
    Returns (model, config). Shared by ``host_work_cpu.py``."""
    from mossnet import MossNetConfig, MossNetForCausalLM

    if interpreting:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from triton_interpreter_fix import fix_interpreter_for_numpy2

        fix_interpreter_for_numpy2()
    spec = dict(MODELS[model_name])
    preset = spec.pop("preset", None)
    spec.update(SMALL_WIDTHS)
    config = MossNetConfig.from_preset(preset, **spec) if preset else MossNetConfig(**spec)
    torch.manual_seed(0)
    model = MossNetForCausalLM(config).train()
    inner = model.model
    inner.execution_policy = inner.execution_policy.replace(
        scan_impl="triton" if interpreting else "chunked", expert_matmul="auto", fused_ops="auto")
    return model, config


@contextlib.contextmanager
def grouped_gemm_on_cpu():
    """The CUDA choice for the expert products, one grouped GEMM each (torch's CPU version of
    ``torch._grouped_mm``), while the block runs. The switch is module state, so it is undone
    on leaving (callers share the process)."""
    grouped = importlib.import_module("mossnet.ops.moe.grouped_linear")
    usable = grouped._grouped_mm_usable
    if hasattr(torch, "_grouped_mm"):
        grouped._grouped_mm_usable = lambda x, weight: x.dtype != torch.float64
    try:
        yield
    finally:
        grouped._grouped_mm_usable = usable


def count(model_name: str, batch: int, seq: int, prefill: bool = False) -> tuple[_Census, int]:
    """The census of one training step of ``model_name`` at small widths (``prefill``: of one
    inference forward that returns the generation cache, as ``generate``'s prefill runs it); and
    its layer count."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    model, config = small_model(model_name, interpreting)
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1))

    census = _Census()
    undo_launch_count = _count_triton_launches(census) if interpreting else (lambda: None)

    def step(counting: bool) -> None:
        if prefill:
            model.eval()
            with torch.no_grad():
                census.phase = "forward"
                model(input_ids=ids[:, :-1], use_cache=True)
            return
        with torch.autograd.set_detect_anomaly(counting, check_nan=False):
            census.phase = "forward"
            out = model(input_ids=ids[:, :-1], output_router_stats=True)
            loss = F.cross_entropy(out.logits.reshape(-1, config.vocab_size).float(), ids[:, 1:].reshape(-1))
            loss = loss + out.aux_loss
            census.phase = "backward"
            loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        with grouped_gemm_on_cpu():
            step(False)  # first-call work (kernel compiles, caches) stays out of the count
            with census:
                step(True)
    finally:
        undo_launch_count()
    return census, config.n_layers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="base", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--prefill", action="store_true",
                    help="count an inference forward that builds the generation cache instead of a training step")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("count_step_ops: TRITON_INTERPRET is not 1, so the Triton kernels' references are counted instead")
    census, n_layers = count(args.model, args.batch, args.seq, prefill=args.prefill)
    for phase in ("forward",) if args.prefill else ("forward", "backward"):
        ops = sum(v for (p, site), v in census.by_site.items() if p == phase and not site.startswith("triton"))
        kernels = sum(v for (p, site), v in census.by_site.items() if p == phase and site.startswith("triton"))
        print(f"{phase}: {ops} aten compute ops + {kernels} Triton launches")
    print(f"-- top {args.top} lines ({n_layers} layers, batch {args.batch} x {args.seq})")
    for (phase, site), n in census.by_site.most_common(args.top):
        print(f"{n:6d}  {phase:8s}  {site}")
    print(f"-- top {args.top} ops")
    for (phase, name), n in census.by_op.most_common(args.top):
        print(f"{n:6d}  {phase:8s}  {name}")


if __name__ == "__main__":
    main()
