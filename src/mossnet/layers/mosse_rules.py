"""The rules the MoSSE forward (``mosse.py``) and its one-token step (``mosse_decode.py``) share,
so that the two can never disagree: the dt rule, the decay folding of the compact scan, the layout
of the carried conv windows, and the per-row copies of each expert's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The compact scan runs every expert as one head with A = -1 and each row's decay rate folded
# into its step (see MoSSE._scan), then divides the output by that rate. The fold uses at least
# this rate: below it, exp(-dt * rate) rounds to exactly 1 in fp32 and fp64 (for dt < 2^10), so
# a slower (or zero, A_log = -inf) decay is computed exactly as no decay, and the division is by
# a power of two (exact). Large enough that the folded values stay normal floats.
FOLD_FLOOR = 2.0**-64


def step_size(dt_raw: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """The dt rule of the forward and of decode: dt = softplus(dt_raw + dt_bias), in dt_bias's
    dtype (fp32, or fp64 for fp64 layers).

    dt_raw: (..., 1) projected feature; dt_bias: broadcastable to (...). Returns (...).
    """
    return F.softplus(dt_raw.squeeze(-1).to(dt_bias.dtype) + dt_bias)


def scan_input_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the sequence forward hands x, B and C to the scan in.

    Under bf16 autocast on x's device: bf16. The conv and SiLU before it run in fp32 (their
    weights are fp32 and gathers are not autocast ops), but the spec's scan contract takes bf16
    inputs with an fp32 state, and only half inputs reach the GPU kernels' tensor cores (fp32
    inputs are multiplied in IEEE fp32). fp16 never: the decay folding (``FOLD_FLOOR``) makes
    values fp16 cannot hold, so fp16 inputs scan in fp32. Otherwise x's own dtype.

    The one-token step keeps x, B, C in fp32 (it is the spec's fp32 reference, within the bf16
    bound of this forward)."""
    if x.dtype == torch.float16:
        return torch.float32
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        if torch.get_autocast_dtype(x.device.type) == torch.bfloat16:
            return torch.bfloat16
    return x.dtype


def conv_window_shape(config) -> tuple[int, ...]:
    """One layer's carried conv state for one sequence (the cache's ``conv_states[l]`` without
    the batch dim).

    By default each expert's window of its x, B, C: (E, K-1, P+2N). With
    ``ssm_conv_placement="shared"`` one window of u: (K-1, d_model). With ``ssm_share_bc``
    (expert placement) both kinds, flattened one after the other into (E*(K-1)*P + (K-1)*2N,):
    the experts' x windows (E, K-1, P), then the shared B|C window (K-1, 2N). (Both parts are
    plain views of it, so the decode step updates them in place, also in exported graphs.)

    Example:
        >>> from mossnet import MossNetConfig
        >>> cfg = MossNetConfig.from_preset("tiny")
        >>> conv_window_shape(cfg), conv_window_shape(MossNetConfig.from_preset("tiny", ssm_share_bc=True))
        ((4, 3, 64), (480,))
    """
    E, P, N, K = config.ssm_experts, config.ssm_head_dim, config.ssm_state_dim, config.conv_kernel
    if getattr(config, "ssm_conv_placement", "expert") == "shared":
        return (K - 1, config.d_model)
    if getattr(config, "ssm_share_bc", False):
        return (E * (K - 1) * P + (K - 1) * 2 * N,)
    return (E, K - 1, P + 2 * N)


def fold_scale(decay_rate: torch.Tensor) -> torch.Tensor:
    """The rate folded into the compact scan's step: ``max(-A, FOLD_FLOOR)`` (see FOLD_FLOOR)."""
    return decay_rate.clamp(min=FOLD_FLOOR)


def _cast(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A weight for a product with ``like``: as is under autocast (which casts), else in ``like``'s dtype."""
    return weight if torch.is_autocast_enabled() else weight.to(like.dtype)


@dataclass
class SequenceFeatures:
    """Per-token features that all experts share (spec section 7), or None when off.
    conv_u: (n, d_model) the shared conv of u (``ssm_conv_placement="shared"``); bc: (n, 2N)
    SiLU of the shared B|C (``ssm_share_bc``)."""

    conv_u: torch.Tensor | None = None
    bc: torch.Tensor | None = None


@dataclass
class ExpertRows:
    """Per-row copies of each row's expert's parameters, in the compute dtype. dt_bias,
    decay_rate (= -A >= 0): (...,); skip_D, norm_weight, z_bias: (..., P) (z_bias may be None)."""

    dt_bias: torch.Tensor
    decay_rate: torch.Tensor
    skip_D: torch.Tensor
    norm_weight: torch.Tensor
    z_bias: torch.Tensor | None

    def unflatten(self, *shape: int) -> "ExpertRows":
        """Rows (M, ...) -> (*shape, ...) with M = prod(shape)."""
        fields = (self.dt_bias, self.decay_rate, self.skip_D, self.norm_weight, self.z_bias)
        return ExpertRows(*(None if t is None else t.view(*shape, *t.shape[1:]) for t in fields))
