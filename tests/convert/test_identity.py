"""The identity of spec section 8, in float64, at y before the read-out.

With state_update="all", A = 0 (A_log = -inf), dt = 1 (d row 0, dt bias softplus^-1(1)), D = 0 and
the identity conv (current-token tap 1, bias 0), expert h of a converted layer computes

    y_t = sum_{s<=t} (SiLU(q_t) . SiLU(k_s)) SiLU(v_s)

with q, k, v taken from the teacher's own projection modules (k and v through transformers'
``repeat_kv``, so head h reads key/value head kv(h)): a causal linear attention of the teacher's
projections, without softmax or RoPE. y is captured where the layer computes it (scan output + D x).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import repeat_kv

from mossnet.convert.llama import mossnet_config_for
from mossnet.convert.pipeline import build_student
from mossnet.execution import ExecutionPolicy
from mossnet.layers.sequence_layout import SequenceLayout
from mossnet.ops.mosse.read_out import unfold_output


def capture_y(mixer, u, policy):
    """Run the mixer on u (batch, T, D) and return each expert's y (batch, T, E, P): the scan's
    output plus D x, captured where the layer computes it, placed by the rows' token and expert."""
    captured = {}
    mix, scan = mixer._mix, mixer._scan

    def spy_mix(flat, rows, *args, **kwargs):
        captured["rows"] = rows
        return mix(flat, rows, *args, **kwargs)

    def spy_scan(x, B, C, dt, params, *args, **kwargs):
        y_folded, scale, final = scan(x, B, C, dt, params, *args, **kwargs)
        captured["y"] = unfold_output(y_folded.reshape(x.shape), scale, x, params.skip_D)
        return y_folded, scale, final

    mixer._mix, mixer._scan = spy_mix, spy_scan
    try:
        mixer(u, SequenceLayout.build(u.shape[0], u.shape[1]), policy=policy)
    finally:
        del mixer._mix, mixer._scan
    batch, T = u.shape[:2]
    rows, E = captured["rows"], mixer.n_experts
    real = rows.expert < E
    y = torch.full((batch * T, E, mixer.head_dim), float("nan"), dtype=captured["y"].dtype)
    y[rows.token[real], rows.expert[real]] = captured["y"][real]
    return y.view(batch, T, E, -1)


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.mark.parametrize("scan_impl", ["reference", "chunked"])
def test_converted_layer_is_a_linear_attention_of_the_teachers_projections(make_teacher, scan_impl):
    teacher, _ = make_teacher(save=False)
    teacher = teacher.double()
    cfg = mossnet_config_for(teacher.config, teacher.config.num_attention_heads, "all")
    policy = ExecutionPolicy(scan_impl=scan_impl, chunk_size=8)
    student = build_student(teacher, cfg, seed=0).double()
    batch, T, d = 2, 19, teacher.config.head_dim
    u = torch.randn(batch, T, teacher.config.hidden_size, dtype=torch.float64)
    torch.set_grad_enabled(False)  # restored by the autouse fixture below
    for block, layer in zip(student.model.layers, teacher.model.layers):
        mixer, attn = block.mixer, layer.self_attn
        with torch.no_grad():
            mixer.A_log.fill_(-math.inf)  # A = 0 exactly
            mixer.in_proj[:, -1] = 0.0  # d row
            mixer.dt_bias.fill_(math.log(math.expm1(1.0)))  # softplus^-1(1): dt = 1
            mixer.D.zero_()
            mixer.conv_weight.zero_()
            mixer.conv_weight[..., -1] = 1.0  # tap K-1 multiplies the current token
            mixer.conv_bias.zero_()
        y = capture_y(mixer, u, policy)

        heads = lambda t: t.view(batch, T, -1, d).transpose(1, 2)  # noqa: E731  (batch, heads, T, d)
        q = F.silu(heads(attn.q_proj(u)))
        k = F.silu(repeat_kv(heads(attn.k_proj(u)), attn.num_key_value_groups))
        v = F.silu(repeat_kv(heads(attn.v_proj(u)), attn.num_key_value_groups))
        scores = (q @ k.transpose(-1, -2)).tril()  # (batch, H, t, s), s <= t
        want = (scores @ v).transpose(1, 2)  # (batch, T, H, d)
        assert y.dtype == torch.float64 and y.shape == want.shape
        err = float((y - want).abs().max() / want.abs().max())
        assert err < 1e-10, err
        # Not trivially true: a decay or another head's k breaks it.
        assert float((y - (scores.flip(1) @ v).transpose(1, 2)).abs().max()) > 1e-3
