"""How a stage kernel is compiled and tuned: :func:`stage_kernel` declares it, with its configs.

Each stage file declares its kernels as::

    @stage_kernel([triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2), ...])
    def fwd_o_kernel(..., T, NC, E, N, P, ..., CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, ...):

and launches them with :meth:`StageKernel.launch`, passing the :class:`KernelChoices` of the
call. All tuning state lives in the :class:`StageKernel` objects, one per kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ...launch_grid import next_power_of_2

# Sizes that vary from call to call are not specialised on their divisibility (as fla does with
# do_not_specialize=['T']): a new T does not compile a new kernel. KernelChoices.specialize
# selects Triton's default instead; on an H200 both gave the same results.
PER_CALL_SIZES = ["T", "NC", "E"]


@dataclass(frozen=True)
class KernelChoices:
    """What every kernel launch of one scan call is told (built by ``function.kernel_choices``).

    Attributes:
        prec: precision of fp32 dot products: "ieee" for fp32 inputs, "tf32" for half inputs.
        half_operands: the LOWP flag of the output, dx and gradient kernels: products of two
            half-precision inputs stay in the input dtype (fp32 accumulation).
        autotune: time the configs (once per key); False runs the first config.
        specialize: Triton's integer specialisation of T, NC, E.
        dtype: the dtype of the inputs x, B, C (part of the tuning key).
        state_dtype: the dtype the chunk states and their gradients are stored in between
            passes (float32, or bfloat16 with ``TritonScanOptions.state_bf16``).
    """

    dtype: torch.dtype
    prec: str
    half_operands: bool
    autotune: bool
    specialize: bool
    state_dtype: torch.dtype = torch.float32


def _pow2_at_least_16(n: int) -> int:
    return max(16, next_power_of_2(n))


def fit_config(config: triton.Config, N: int, P: int) -> triton.Config:
    """``config`` with its tiles cut to the problem: BLOCK_P at most P (rounded up to a power of
    two >= 16); BLOCK_N likewise when the config tiles N, else one tile over all of N.

    The warps shrink with the tile (a tile cut to half its area runs on half the warps, at
    least one), so each warp keeps the share of the tile its config was declared and tested
    with. It must: keeping the warps would make (BLOCK_P=32, num_warps=8) out of fwd_o's
    (64, 8) at P <= 32, and on Triton 3.6 / Hopper that combination gives wrong outputs or an
    illegal memory access (docs/GPU_NOTES.md)."""
    kwargs = dict(config.kwargs)
    area_before = kwargs["BLOCK_P"] * kwargs.get("BLOCK_N", 1)
    kwargs["BLOCK_P"] = min(kwargs["BLOCK_P"], _pow2_at_least_16(P))
    if "BLOCK_N" in kwargs:
        kwargs["BLOCK_N"] = min(kwargs["BLOCK_N"], _pow2_at_least_16(N))
        area_after = kwargs["BLOCK_P"] * kwargs["BLOCK_N"]
    else:
        area_after = kwargs["BLOCK_P"]
        kwargs["BLOCK_N"] = _pow2_at_least_16(N)
    warps = max(1, config.num_warps * area_after // area_before)
    return triton.Config(kwargs, num_warps=warps, num_stages=config.num_stages, maxnreg=config.maxnreg)


def fit_configs(configs, N: int, P: int) -> list[triton.Config]:
    """The distinct fitted configs, in declaration order (the first stays the default)."""
    fitted: list[triton.Config] = []
    for config in configs:
        candidate = fit_config(config, N, P)
        if candidate not in fitted:
            fitted.append(candidate)
    return fitted


class StageKernel:
    """One Triton kernel with its tuning candidates: compiled with or without integer
    specialisation, launched with its first config or with the fastest for the call's key.

    Tuning times each distinct fitted candidate once per key (N, P, CHUNK and the call's
    :class:`KernelChoices`, which hold the input dtype) with ``triton.testing.do_bench`` and
    keeps the fastest for the life of this object; a candidate that does not compile or does
    not fit the GPU is not chosen. ``triton.autotune`` does the same, but its per-launch
    bookkeeping (argument dictionaries, a key over every argument) cost several times this
    object's host time per launch, and the scan makes six launches per layer per training step.

    ``configs`` is the declared candidate tuple (the first is the untuned default); assigning
    it (a test running one candidate alone) also forgets what was fitted and tuned.
    """

    def __init__(self, fn, configs: list[triton.Config]):
        self.name = fn.__name__.removesuffix("_kernel")
        self._jit = {
            False: triton.jit(fn, do_not_specialize=PER_CALL_SIZES),
            True: triton.jit(fn),
        }
        self._best: dict[tuple, triton.Config] = {}
        self._last_timings: list[tuple[triton.Config, float]] = []
        self.configs = configs

    @property
    def configs(self) -> tuple[triton.Config, ...]:
        return self._configs

    @configs.setter
    def configs(self, configs) -> None:
        self._configs = tuple(configs)
        self._fitted: dict[tuple[int, int], list[triton.Config]] = {}
        self.reset_tuning()

    def launch(self, grid, args: tuple, consts: dict, choices: KernelChoices) -> None:
        """Run on ``grid`` (a function of the config's meta-parameters) with positional ``args``
        (ending in ``..., N, P``) and constexpr ``consts`` (including ``CHUNK``)."""
        N, P = args[-2], args[-1]
        candidates = self._fitted.get((N, P))
        if candidates is None:
            candidates = self._fitted[(N, P)] = fit_configs(self.configs, N, P)
        config = candidates[0]
        if choices.autotune and len(candidates) > 1:
            key = (N, P, consts["CHUNK"], choices)
            config = self._best.get(key) or self._tune(key, candidates, grid, args, consts, choices.specialize)
        self._run(config, grid, args, consts, choices.specialize)

    def _run(self, config, grid, args, consts, specialize: bool) -> None:
        self._jit[specialize][grid](  # maxnreg None: no register cap (Triton drops None options)
            *args, **consts, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages,
            maxnreg=config.maxnreg,
        )

    def _tune(self, key, candidates, grid, args, consts, specialize: bool) -> triton.Config:
        from triton.testing import do_bench

        times = []
        for config in candidates:
            try:
                run = lambda c=config: self._run(c, grid, args, consts, specialize)  # noqa: E731
                times.append(do_bench(run, warmup=5, rep=20, return_mode="median"))
            except (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError):
                times.append(float("inf"))  # a config that does not fit this GPU is just not chosen
        best = candidates[min(range(len(candidates)), key=times.__getitem__)]
        self._best[key] = best
        self._last_timings = list(zip(candidates, times))
        return best

    def tuning_log(self) -> list[tuple[dict, float]]:
        """(meta-parameters, median ms) of each candidate at the latest tuning, for benchmarks."""
        return [({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages,
                  **({} if c.maxnreg is None else {"maxnreg": c.maxnreg})}, ms)
                for c, ms in self._last_timings]

    def reset_tuning(self) -> None:
        """Forget the tuned choices: the next launch of each key times the candidates again."""
        self._best.clear()
        self._last_timings = []


def stage_kernel(configs: list[triton.Config]):
    """Decorator: ``fn`` (a Triton kernel body, not yet jitted) becomes a :class:`StageKernel`
    tuned over ``configs``."""

    def wrap(fn) -> StageKernel:
        return StageKernel(fn, configs)

    return wrap
