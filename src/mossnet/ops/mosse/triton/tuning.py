"""How a stage kernel is compiled and tuned: :func:`stage_kernel` declares it, with its configs.

Each stage file declares its kernels as::

    @stage_kernel([triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2), ...])
    def fwd_o_kernel(..., T, NC, E, N, P, ..., CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, ...):

and launches them with :meth:`StageKernel.launch`, passing the :class:`KernelChoices` of the
call. Tuning is Triton's own ``triton.autotune``, keyed on (N, P, CHUNK) and the dtypes of the
tensor arguments, so each key is timed once per process; there is no other tuning state.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

# Sizes that vary from call to call are not specialised on their divisibility (as fla does with
# do_not_specialize=['T']): a new T does not compile a new kernel. KernelChoices.specialize
# selects Triton's default instead; on an H200 both gave the same results.
PER_CALL_SIZES = ["T", "NC", "E"]
TUNING_KEY = ["N", "P", "CHUNK"]  # Triton adds the dtype of every tensor argument


@dataclass(frozen=True)
class KernelChoices:
    """What every kernel launch of one scan call is told (built by ``function.kernel_choices``).

    Attributes:
        prec: precision of fp32 dot products: "ieee" for fp32 inputs, "tf32" for half inputs.
        half_operands: the LOWP flag of the output, dx and gradient kernels: products of two
            half-precision inputs stay in the input dtype (fp32 accumulation).
        autotune: time the configs (once per key); False runs the first config.
        specialize: Triton's integer specialisation of T, NC, E.
    """

    prec: str
    half_operands: bool
    autotune: bool
    specialize: bool


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def fit_config(config: triton.Config, N: int, P: int) -> triton.Config:
    """``config`` with its tiles cut to the problem: BLOCK_P at most P (rounded up to a power of
    two >= 16); BLOCK_N likewise when the config tiles N, else one tile over all of N."""
    kwargs = dict(config.kwargs)
    kwargs["BLOCK_P"] = min(kwargs["BLOCK_P"], _pow2_at_least_16(P))
    if "BLOCK_N" in kwargs:
        kwargs["BLOCK_N"] = min(kwargs["BLOCK_N"], _pow2_at_least_16(N))
    else:
        kwargs["BLOCK_N"] = _pow2_at_least_16(N)
    return triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def fit_configs(configs, N: int, P: int) -> list[triton.Config]:
    """The distinct fitted configs, in declaration order (the first stays the default)."""
    fitted: list[triton.Config] = []
    for config in configs:
        candidate = fit_config(config, N, P)
        if candidate not in fitted:
            fitted.append(candidate)
    return fitted


def _bench(kernel_call, quantiles):
    # Few, short repetitions: at most four configs per kernel, tuned once per key.
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


class StageKernel:
    """One Triton kernel, compiled with or without integer specialisation, launched with its
    first config or through ``triton.autotune`` over all of them.

    ``configs`` is the declared candidate list (the first is the untuned default); the tuners
    hold the same list object, so a test may narrow it in place (``configs[:] = [...]``) before
    the first launch.
    """

    def __init__(self, fn, configs: list[triton.Config]):
        self.name = fn.__name__.removesuffix("_kernel")
        self.configs = configs
        self._jit = {
            False: triton.jit(fn, do_not_specialize=PER_CALL_SIZES),
            True: triton.jit(fn),
        }
        self._tuned = {
            specialize: triton.autotune(
                configs=self.configs,
                key=TUNING_KEY,
                prune_configs_by={"early_config_prune": self._prune},
                do_bench=_bench,
            )(jitted)
            for specialize, jitted in self._jit.items()
        }

    def _prune(self, configs, named_args, **kwargs):
        return fit_configs(configs, named_args["N"], named_args["P"])

    def launch(self, grid, args: tuple, consts: dict, choices: KernelChoices) -> None:
        """Run on ``grid`` (a function of the config's meta-parameters) with positional ``args``
        (ending in ``..., N, P``) and constexpr ``consts``."""
        N, P = args[-2], args[-1]
        if choices.autotune and len(fit_configs(self.configs, N, P)) > 1:
            self._tuned[choices.specialize][grid](*args, **consts)
            return
        config = fit_config(self.configs[0], N, P)
        self._jit[choices.specialize][grid](
            *args, **consts, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )

    def tuning_log(self) -> list[tuple[dict, float]]:
        """(meta-parameters, median ms) of the latest tuning of either variant, for benchmarks."""
        log = []
        for tuner in self._tuned.values():
            for config, times in getattr(tuner, "configs_timings", {}).items():
                meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
                log.append((meta, times[0]))
        return log

    def reset_tuning(self) -> None:
        """Forget the tuned choices (the next launch of each key times the configs again)."""
        for tuner in self._tuned.values():
            tuner.cache.clear()
            tuner.configs_timings = {}


def stage_kernel(configs: list[triton.Config]):
    """Decorator: ``fn`` (a Triton kernel body, not yet jitted) becomes a :class:`StageKernel`
    tuned over ``configs``."""

    def wrap(fn) -> StageKernel:
        return StageKernel(fn, configs)

    return wrap
