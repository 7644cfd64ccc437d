"""The parts of a converted MoSSE layer that the teacher has no counterpart for, set so that the
layer starts as close to the teacher's attention output as the architecture allows.

Expert h of a converted layer computes (spec sections 2 and 8; C, B, x are the teacher's q_h,
k_kv(h), v_kv(h) projections, see :mod:`mossnet.convert.llama`)

    y_{t,h} = sum_{s<=t} (phi(c_C q_t) . phi(c_B k_s)) dt_s exp(A_h sum_{r=s+1..t} dt_r) phi(c_x v_s)
    o_t     = sum_h g_{t,h} W_o^h RMSNorm_P(y_{t,h} * SiLU(z_{t,h}))        (phi = SiLU)

against the teacher's sum_h W_o^h softmax_s(RoPE(q_t) . RoPE(k_s) / sqrt(d_h)) v_s. The choices,
each for a reason:

* **z**: its weight rows are 0 and ``z_bias`` = b with SiLU(b) = 1 (``ssm_z_bias``), so the gate
  SiLU(z) starts as the constant 1 and the read-out is RMSNorm(y). z = 0 would give SiLU(0) = 0,
  no output and no gradient through y.
* **dt**: the d row is 0 and the dt bias softplus^-1(1): every step is dt = 1, the identity's
  value. With RMSNorm after the scan, a constant dt only matters through exp(A dt), so the decay
  is set by A alone.
* **D = 0**: the teacher has no skip term (the current token is already in the sum at s = t).
* **conv**: the identity (only the current-token tap, no bias), so x, B, C at token t come from
  token t alone, as q, k, v do. The tap is a per-expert scale c (below), not 1.
* **feature scale c**: the conv's SiLU is the feature map. SiLU is nearly linear near 0
  (SiLU(u) = u/2 + u^2/4 + O(u^4)), so scaling q, k, v down to a small RMS before it makes the
  layer close to a *linear* attention of the teacher's own q, k, v, while scale 1 keeps SiLU's
  bend. RMSNorm removes the overall scale, so a small c costs nothing. c is calibrated per expert
  and channel group as (target RMS) / (RMS of the teacher's projection on the calibration batch);
  the target is chosen per head from ``feature_rms`` candidates (None = scale 1, the identity).
* **A**: one decay per head, chosen on the calibration batch from half-lives in
  ``half_lives`` (tokens; inf = no decay). Softmax heads range from local to global, and a
  linear attention without decay weighs every past token equally. "No decay" is stored as a
  finite ``A_log`` (NO_DECAY_A_LOG) whose decay is exactly 1 in fp32, so the saved weights pass
  the finite-weights check that loading applies (``A_log = -inf`` is the exact zero decay the
  layer also supports).
* **router**: zero logits when k = E, so every gate is exactly 1/k; for k < E small random
  logits (``initializer_range``), since zero logits would tie and always pick the first k
  experts. The router is trained by distillation.
* **norm weight (the gate compensation)**: o is linear in the per-expert norm weights, so they
  are fitted by least squares to the teacher's attention output on the calibration batch, jointly
  over all experts and channels, through the teacher's W_o (ridge-regularised). This absorbs the
  gate ~1/k, the RMS that the norm fixes for each head, and the heads' correlations.

What cannot be carried over: RoPE (positions reach the layer only through the decay and the
order of the scan) and the softmax (its normaliser and its sharpness; RMSNorm fixes each head's
output RMS per token instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mossnet.layers.sequence_layout import SequenceLayout


def _silu_inverse_of_one() -> float:
    """b with SiLU(b) = b sigmoid(b) = 1 (Newton's method; b = 1.2785...)."""
    b = 1.0
    for _ in range(50):
        s = 1 / (1 + math.exp(-b))
        b -= (b * s - 1) / (s + b * s * (1 - s))
    return b


Z_BIAS = _silu_inverse_of_one()
DT_BIAS_ONE = math.log(math.expm1(1.0))  # softplus^-1(1)
# |A| = exp(-40) = 4e-18: exp(-dt |A|) rounds to exactly 1 in fp32 for any dt < 1e10.
NO_DECAY_A_LOG = -40.0


@dataclass(frozen=True)
class CalibrationGrid:
    """Candidates tried per head on the calibration batch (the best per head is kept).

    half_lives: decay half-lives in tokens (``math.inf``: no decay).
    feature_rms: target RMS of c q, c k, c v before the conv's SiLU (None: c = 1, the spec's
        identity feature map).
    ridge: Tikhonov weight of the joint norm-weight fit, relative to the mean diagonal.
    """

    half_lives: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0, math.inf)
    feature_rms: tuple[float | None, ...] = (None, 0.1)
    ridge: float = 1e-3

    def candidates(self) -> list[tuple[float | None, float]]:
        return [(rms, half_life) for rms in self.feature_rms for half_life in self.half_lives]


def a_log_for_half_life(half_life: float) -> float:
    """A_log such that exp(A * 1) = 2^(-1/half_life) at dt = 1 (NO_DECAY_A_LOG for inf)."""
    if math.isinf(half_life):
        return NO_DECAY_A_LOG
    return math.log(math.log(2.0) / half_life)


@torch.no_grad()
def init_new_parts(mixer, initializer_range: float, generator: torch.Generator | None = None) -> None:
    """Set z, d, dt bias, A (no decay), D, the conv (identity), the norm weight (= k, the gate
    compensation before calibration) and the router, as the module docstring says. The rows
    mapped from the teacher (x, B, C, W_o) are left alone."""
    P = mixer.head_dim
    if mixer.z_bias is None:
        raise ValueError("a converted layer needs ssm_z_bias=True (its gate starts from a constant)")
    mixer.in_proj[:, :P] = 0.0  # z rows
    mixer.in_proj[:, -1] = 0.0  # d row
    mixer.z_bias.fill_(Z_BIAS)
    mixer.dt_bias.fill_(DT_BIAS_ONE)
    mixer.A_log.fill_(NO_DECAY_A_LOG)
    mixer.D.zero_()
    mixer.conv_weight.zero_()
    mixer.conv_weight[..., -1] = 1.0  # tap K-1 multiplies the current token
    mixer.conv_bias.zero_()
    mixer.norm_weight.fill_(float(mixer.experts_per_token))
    if mixer.router is not None:
        if mixer.experts_per_token == mixer.n_experts:
            mixer.router.weight.zero_()
        else:
            mixer.router.weight.copy_(torch.randn(mixer.router.weight.shape, generator=generator)
                                      * initializer_range)


@torch.no_grad()
def head_readouts(mixer, u: torch.Tensor, layout: SequenceLayout | None = None) -> torch.Tensor:
    """Each expert's gated read-out g_{t,h} RMSNorm_P(y_{t,h} * SiLU(z_{t,h})) with unit norm
    weight, as the layer itself computes it: (batch, T, E, P) (0 where h is not routed).

    The layer only returns sum_h W_o^h (...), so W_o is swapped for a selector that places
    expert h's P outputs at their own columns (floor(D / P) experts per forward), and the norm
    weight for ones; both are restored. Returns fp32 (fp64 for an fp64 layer)."""
    E, P = mixer.n_experts, mixer.head_dim
    batch, T, D = u.shape
    per_pass = D // P
    if per_pass == 0:
        raise ValueError(f"head_readouts needs d_model ({D}) >= head dim ({P})")
    saved_out, saved_norm = mixer.out_proj.detach().clone(), mixer.norm_weight.detach().clone()
    dtype = torch.promote_types(u.dtype, torch.float32)  # fp32, or fp64 for fp64 layers
    result = u.new_zeros(batch, T, E, P, dtype=dtype)
    eye = torch.eye(P, dtype=mixer.out_proj.dtype, device=mixer.out_proj.device)
    try:
        mixer.norm_weight.fill_(1.0)
        for first in range(0, E, per_pass):
            group = range(first, min(first + per_pass, E))
            mixer.out_proj.zero_()
            for j, h in enumerate(group):
                mixer.out_proj[h, j * P:(j + 1) * P] = eye
            o = mixer(u, layout)[0].to(dtype)
            for j, h in enumerate(group):
                result[:, :, h] = o[..., j * P:(j + 1) * P]
    finally:
        mixer.out_proj.copy_(saved_out)
        mixer.norm_weight.copy_(saved_norm)
    return result


@dataclass
class LayerCalibration:
    """What calibration chose for one layer, per expert, and the relative error it reached on
    the calibration batch (see :func:`mossnet.convert.report.relative_error`)."""

    half_life: list[float] = field(default_factory=list)
    feature_rms: list[float | None] = field(default_factory=list)
    error: float = float("nan")

    def to_json(self) -> dict:
        return {"half_life": [None if math.isinf(h) else h for h in self.half_life],
                "feature_rms": self.feature_rms, "relative_error": self.error}


@torch.no_grad()
def set_head(mixer, h: int, u: torch.Tensor, feature_rms: float | None, half_life: float) -> None:
    """Expert h's conv taps (feature scale) and decay. feature_rms None: taps 1 (identity);
    else each of x, B, C is scaled so its RMS on ``u`` (batch, T, D) is ``feature_rms``."""
    P, N = mixer.head_dim, mixer.state_dim
    groups = (slice(0, P), slice(P, P + N), slice(P + N, P + 2 * N))
    if feature_rms is None:
        mixer.conv_weight[h, :, -1] = 1.0
    else:
        proj = u.reshape(-1, u.shape[-1]) @ mixer.in_proj[h, P:2 * P + 2 * N].T  # (n, P + 2N): x, B, C
        for group in groups:
            rms = proj[:, group].pow(2).mean().sqrt().clamp_min(1e-12)
            mixer.conv_weight[h, group, -1] = feature_rms / rms
    mixer.A_log[h] = a_log_for_half_life(half_life)


def per_head_error(readouts: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Relative squared error of each expert's best per-channel rescaling of its read-out to the
    teacher's head output (a diagonal least-squares fit in closed form): (E,).

    readouts, heads: (batch, T, E, P)."""
    r = readouts.reshape(-1, *readouts.shape[-2:]).double()
    a = heads.reshape(-1, *heads.shape[-2:]).double()
    num, den = (r * a).sum(0), (r * r).sum(0).clamp_min(1e-300)
    total = (a * a).sum((0, 2)).clamp_min(1e-300)
    return (total - (num * num / den).sum(-1)) / total


@torch.no_grad()
def fit_norm_weights(mixer, readouts: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Least-squares norm weights w (E, P) for o_t = sum_h W_o^h (w_h * r_{t,h}) ~ target_t.

    o is linear in w. With r_t the concatenated read-outs (E P,), W = [W_o^1 ... W_o^E] (D, E P)
    and M = W^T W, the normal equations are (M * sum_t r_t r_t^T) w = sum_t r_t * (W^T target_t)
    (* elementwise). A ridge term pulls w towards the uncalibrated k (the gate compensation), so
    a channel the batch never exercises (an expert never routed) keeps it.

    readouts: (batch, T, E, P) from :func:`head_readouts`; target: (batch, T, D)."""
    E, P = mixer.n_experts, mixer.head_dim
    R = readouts.reshape(-1, E * P).double()
    W = mixer.out_proj.detach().double().permute(1, 0, 2).reshape(-1, E * P)  # (D, E P)
    gram = (W.T @ W) * (R.T @ R)
    rhs = (R * (target.reshape(-1, W.shape[0]).double() @ W)).sum(0)
    lam = ridge * gram.diagonal().mean().clamp_min(1e-300)
    prior = torch.full_like(rhs, float(mixer.experts_per_token))
    eye = torch.eye(E * P, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + lam * eye, rhs + lam * prior)
    mixer.norm_weight.copy_(w.view(E, P).to(mixer.norm_weight.dtype))


@torch.no_grad()
def calibrate_layer(mixer, u: torch.Tensor, heads: torch.Tensor, target: torch.Tensor,
                    grid: CalibrationGrid = CalibrationGrid()) -> LayerCalibration:
    """Choose each expert's feature scale and decay from ``grid`` (the candidate whose read-out
    best fits that head's teacher output), then fit the norm weights jointly.

    u: (batch, T, D) the mixer's input (the teacher's layer input after the copied norm);
    heads: (batch, T, E, P) the teacher's per-head attention outputs; target: (batch, T, D) the
    teacher's attention output. Experts are independent given the routing (each has its own
    conv, decay and scan), so choosing per expert from one forward per candidate is exact."""
    from .report import relative_error

    candidates = grid.candidates()
    errors = []
    for feature_rms, half_life in candidates:
        for h in range(mixer.n_experts):
            set_head(mixer, h, u, feature_rms, half_life)
        errors.append(per_head_error(head_readouts(mixer, u), heads))
    best = torch.stack(errors).argmin(0).tolist()
    result = LayerCalibration()
    for h, i in enumerate(best):
        feature_rms, half_life = candidates[i]
        set_head(mixer, h, u, feature_rms, half_life)
        result.feature_rms.append(feature_rms)
        result.half_life.append(half_life)
    fit_norm_weights(mixer, head_readouts(mixer, u), target, grid.ridge)
    result.error = float(relative_error(mixer(u)[0], target))
    return result
