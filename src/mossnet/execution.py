"""How a MossNet model runs: one :class:`ExecutionPolicy`, and the torch-state checks.

The policy is every execution choice that does not change the math: which scan and which
expert-matmul implementation run, how the Triton kernels are tuned, whether decode replays a
captured CUDA graph, whether token ids are range-checked on CUDA. It is built once, by
:meth:`ExecutionPolicy.build`, from the model config (``scan_impl``, ``chunk_size``), the
environment (the ``MOSSNET_TRITON_*`` variables are read here and nowhere else in the model
code) and explicit arguments, and is then passed down as an argument: the model holds one
(``model.execution_policy``) and hands it to every layer it calls.

The second half of this file is the one place that asks torch about its own state (compiling,
exporting, capturing a CUDA graph). Code that must behave differently there -- no host reads,
no data-dependent shapes -- asks these functions, not torch directly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

import torch

from mossnet.errors import ConfigError

# The environment variables the policy reads (their documented spellings; see docs/GPU_NOTES.md).
ENV_TRITON_LOWP = "MOSSNET_TRITON_LOWP"  # "0": every Triton product in tf32, no half operands
ENV_TRITON_AUTOTUNE = "MOSSNET_TRITON_AUTOTUNE"  # "0": fixed first config, no tuning
ENV_TRITON_SPECIALIZE = "MOSSNET_TRITON_SPECIALIZE"  # "1": Triton's default integer specialisation

SCAN_IMPLS = ("auto", "reference", "chunked", "triton")
EXPERT_MATMULS = ("auto", "grouped_mm", "all_experts", "loop")
FUSED_OPS = ("auto", "reference", "triton")


@dataclass(frozen=True)
class ExecutionPolicy:
    """Every execution choice of a MossNet model (none of them changes what is computed).

    Attributes:
        scan_impl: ``mosse_scan`` implementation: "auto" (Triton on CUDA when usable, else
            "chunked"), "reference", "chunked" or "triton".
        chunk_size: chunk length of the plain PyTorch chunked scan.
        expert_matmul: ``grouped_linear`` implementation: "auto", "grouped_mm" (CUTLASS,
            bf16 on sm90+), "all_experts" (every expert on every row, then pick: fixed shapes,
            traceable, no host sync) or "loop" (one matmul per expert; reads group sizes).
        fused_ops: the fused Triton kernels around the scan and the expert products (the
            routers' softmax top-k, ``ops/moe/routing.py``; the MoSSE conv + SiLU and read-out,
            ``ops/conv``, ``ops/mosse/read_out.py``; the MLP's SwiGLU and the experts' combine,
            ``ops/moe/swiglu.py``, ``ops/moe/combine.py``; the decode expert products; the rule
            in ``ops/fused.py``): "auto" (on CUDA where they can run, else the PyTorch
            references), "reference" or "triton" (an error where they cannot run).
        decode_direct_max_pairs: the MoE-MLP decode applies each token's experts directly up to
            this many (token, expert) pairs, and sorts them into groups above it.
        triton_lowp: half-precision dot operands for bf16/fp16 inputs in the Triton scan.
        triton_autotune: tune the Triton kernels' block sizes once per shape.
        triton_specialize: let Triton specialise kernels on the divisibility of T.
        triton_state_bf16: keep the Triton scan's chunk states (and their gradients) in bf16
            between its passes, halving that memory traffic. Off: fp32, as the spec keeps the
            state (the carried and final states are fp32 either way). BENCHMARKS.md has its
            measured error.
        decode_graph: replay one-token decode steps from a captured CUDA graph (CUDA, eval,
            no gradients).
        decode_graph_compile: run that step through ``torch.compile`` before capturing it.
        prefill_graph: replay the prefill (CUDA, eval, no gradients, last position's logits, as
            ``generate`` asks) from a CUDA graph per prompt-length bucket, captured the second
            time a bucket is met (``models/mossnet/cuda_graph_prefill.py``).
        validate_token_ids: range-check token ids on CUDA (a host read; CPU ids are always
            checked, and never inside compile or a graph capture).
    """

    scan_impl: str = "auto"
    chunk_size: int = 64
    expert_matmul: str = "auto"
    fused_ops: str = "auto"
    decode_direct_max_pairs: int = 64
    triton_lowp: bool = True
    triton_autotune: bool = True
    triton_specialize: bool = False
    triton_state_bf16: bool = False
    decode_graph: bool = True
    decode_graph_compile: bool = False
    prefill_graph: bool = False
    validate_token_ids: bool = True

    def __post_init__(self) -> None:
        if self.scan_impl not in SCAN_IMPLS:
            raise ConfigError(f"ExecutionPolicy: scan_impl must be one of {SCAN_IMPLS}, got {self.scan_impl!r}")
        if self.expert_matmul not in EXPERT_MATMULS:
            raise ConfigError(
                f"ExecutionPolicy: expert_matmul must be one of {EXPERT_MATMULS}, got {self.expert_matmul!r}"
            )
        if self.fused_ops not in FUSED_OPS:
            raise ConfigError(f"ExecutionPolicy: fused_ops must be one of {FUSED_OPS}, got {self.fused_ops!r}")
        for name in ("chunk_size", "decode_direct_max_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ExecutionPolicy: {name} must be a positive integer, got {value!r}")
        for field in dataclasses.fields(self):
            if field.type in ("bool", bool) and not isinstance(getattr(self, field.name), bool):
                raise ConfigError(f"ExecutionPolicy: {field.name} must be true or false, got {getattr(self, field.name)!r}")

    @classmethod
    def build(cls, config=None, env: Mapping[str, str] | None = None, **overrides) -> "ExecutionPolicy":
        """The policy of a model: ``config``'s execution fields, then the environment, then
        ``overrides`` (keyword arguments named like the attributes) on top.

        Example:
            >>> p = ExecutionPolicy.build(env={"MOSSNET_TRITON_AUTOTUNE": "0"}, decode_graph=False)
            >>> p.triton_autotune, p.decode_graph, p.scan_impl
            (False, False, 'auto')
        """
        env = os.environ if env is None else env
        fields: dict = {}
        if config is not None:
            fields.update(scan_impl=config.scan_impl, chunk_size=config.chunk_size)
        fields.update(
            triton_lowp=env.get(ENV_TRITON_LOWP, "1") != "0",
            triton_autotune=env.get(ENV_TRITON_AUTOTUNE, "1") != "0",
            triton_specialize=env.get(ENV_TRITON_SPECIALIZE, "0") == "1",
        )
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"ExecutionPolicy: unknown setting(s) {', '.join(unknown)}")
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes) -> "ExecutionPolicy":
        """A copy with ``changes`` applied (validated like a new policy)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain values, for benchmark JSON and logs."""
        return dataclasses.asdict(self)

    def triton_options(self) -> dict:
        """The Triton settings, under the keyword names a fast path may accept."""
        return {"lowp": self.triton_lowp, "autotune": self.triton_autotune, "specialize": self.triton_specialize,
                "state_bf16": self.triton_state_bf16}

    def describe(self, device: torch.device) -> list[tuple[str, str]]:
        """(label, value) rows: what this policy resolves to on ``device`` (``mossnet info``)."""
        import warnings

        from mossnet.ops.moe.grouped_linear import resolve_expert_matmul
        from mossnet.ops.mosse.interface import resolve_impl

        probe = torch.empty(0, device=device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scan = resolve_impl(self.scan_impl, probe)
        note = f" ({caught[0].message})" if caught else ""
        bf16 = torch.empty(0, device=device, dtype=torch.bfloat16)
        matmul = resolve_expert_matmul(self.expert_matmul, bf16, bf16.new_empty(1, 1, 1))
        graph = "off" if not self.decode_graph else ("captured + torch.compile" if self.decode_graph_compile else "captured")
        return [
            ("mosse_scan (training / prefill)", f"{scan} (policy: {self.scan_impl}, chunk {self.chunk_size}){note}"),
            ("mosse_step (decode)", "routed step: only the chosen experts' weights and states"),
            ("expert matmuls (bf16)", f"{matmul} (policy: {self.expert_matmul})"),
            ("fused ops (router top-k, read-out)", _describe_fused(self.fused_ops, device)),
            ("triton kernels", f"lowp={self.triton_lowp} autotune={self.triton_autotune} "
                               f"specialize={self.triton_specialize} state_bf16={self.triton_state_bf16}"),
            ("decode graph (CUDA)", graph),
            ("prefill graph (CUDA)", "captured per prompt-length bucket" if self.prefill_graph else "off"),
            ("token id check on CUDA", "on" if self.validate_token_ids else "off"),
        ]


def _describe_fused(fused_ops: str, device: torch.device) -> str:
    from mossnet.ops.fused import why_triton_cannot_run

    if fused_ops == "reference":
        return "PyTorch reference (policy: reference)"
    reason = why_triton_cannot_run(torch.empty(1, device=device))
    return f"Triton (policy: {fused_ops})" if reason is None else f"PyTorch reference ({reason}; policy: {fused_ops})"


DEFAULT_POLICY = ExecutionPolicy()


# ---------------------------------------------------------------------------------- torch state
def compiling() -> bool:
    """Inside a ``torch.compile`` trace."""
    return torch.compiler.is_compiling()


def exporting() -> bool:
    """Inside a ``torch.export`` trace."""
    return torch.compiler.is_exporting()


def tracing() -> bool:
    """Compiling or exporting: shapes must not depend on values read back to the host."""
    return compiling() or exporting()


def capturing(t: torch.Tensor | None = None) -> bool:
    """The current CUDA stream is capturing a CUDA graph (host reads would fail); with ``t``,
    only if ``t`` is a CUDA tensor."""
    if t is not None and not t.is_cuda:
        return False
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def may_read_back(t: torch.Tensor) -> bool:
    """Reading values of ``t`` to the host is allowed (not traced, not captured). On CUDA it
    still stalls the device; callers that care also check ``t.is_cuda``."""
    return not tracing() and not capturing(t)
