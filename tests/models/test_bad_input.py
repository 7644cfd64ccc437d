"""Bad input fails early with an error that names the problem; odd-but-valid input works.

Token ids outside the vocabulary, wrong ranks / shapes / dtypes / devices given to the ops,
impossible config values; and non-contiguous tensors, which must simply work.
"""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetCache, MossNetConfig
from mossnet.ops import mosse_scan, mosse_step
from mossnet.ops.conv import segment_causal_conv

# --------------------------------------------------------------------- token ids


@pytest.mark.parametrize("bad", [64, 1000, -1])
def test_token_id_outside_vocabulary(make_model, bad):
    model = make_model()
    ids = torch.randint(0, 64, (2, 5))
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size=64"):
        model(ids)
    with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size=64"):
        model.generate(ids, max_new_tokens=2, do_sample=False)


def test_token_id_checked_in_the_decode_step(make_model):
    model = make_model()
    with torch.no_grad():
        cache = model(torch.randint(0, 64, (1, 4))).cache
        with pytest.raises(ValueError, match=r"token id 70\b.*vocab_size=64"):
            model(torch.tensor([[70]]), cache=cache)


def test_model_input_shapes_and_types(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 5))
    with pytest.raises(ValueError, match="input_ids must be \\(batch, T\\)"):
        model(ids[None])
    with pytest.raises(TypeError, match="integer"):
        model(ids.float())
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(batch, T, 16\)"):
        model(inputs_embeds=torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="position_ids must be"):
        model(ids, position_ids=torch.arange(4)[None].expand(2, 4))
    with pytest.raises(ValueError, match="labels must be"):
        model(ids, labels=ids[:, :4])
    with pytest.raises(ValueError, match="cache holds batch 3"):
        model(ids, cache=MossNetCache(model.config, batch_size=3))


# --------------------------------------------------------------------- mosse_scan inputs


def scan_inputs(batch=2, T=6, E=3, P=4, N=5):
    return dict(
        x=torch.randn(batch, T, E, P), dt=torch.rand(batch, T, E), A=-torch.rand(E),
        B=torch.randn(batch, T, E, N), C=torch.randn(batch, T, E, N), D=torch.randn(E, P),
        initial_state=torch.randn(batch, E, N, P),
    )


BAD_SHAPES = [
    ("x", torch.randn(2, 6, 3), r"x must be \(batch, T, E, P\)"),
    ("dt", torch.rand(2, 6), r"dt must be \(batch, T, E\)"),
    ("dt", torch.rand(2, 5, 3), r"dt must be \(batch, T, E\)"),
    ("A", -torch.rand(3, 1), r"A must be \(E,\)"),
    ("A", -torch.rand(4), r"A must be \(E,\)"),
    ("B", torch.randn(2, 6, 3), r"B must be \(batch, T, E, N\)"),
    ("B", torch.randn(2, 6, 2, 5), r"B must be \(batch, T, E, N\)"),
    ("C", torch.randn(2, 6, 3, 4), r"C must have B's shape"),
    ("D", torch.randn(3), r"D must be \(E, P\)"),
    ("D", torch.randn(3, 5), r"D must be \(E, P\)"),
    ("initial_state", torch.randn(2, 3, 5), r"initial_state must be \(batch, E, N, P\)"),
    ("initial_state", torch.randn(1, 3, 5, 4), r"initial_state must be \(batch, E, N, P\)"),
]


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("field,value,message", BAD_SHAPES, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_SHAPES)])
def test_scan_shapes(field, value, message, impl):
    inputs = scan_inputs()
    inputs[field] = value
    with pytest.raises(ValueError, match=message):
        mosse_scan(**inputs, impl=impl)


@pytest.mark.parametrize("field", ["x", "dt", "A", "B", "C", "D", "initial_state"])
def test_scan_dtypes(field):
    inputs = scan_inputs()
    inputs[field] = inputs[field].long()
    with pytest.raises(TypeError, match=rf"{field} must be a floating-point tensor"):
        mosse_scan(**inputs)
    inputs[field] = inputs[field].tolist()
    with pytest.raises(TypeError, match=rf"{field} must be a torch.Tensor"):
        mosse_scan(**inputs)


@pytest.mark.parametrize("field", ["dt", "A", "B", "C", "D", "initial_state"])
def test_scan_devices(field):
    """Tensors on different devices: a clear error (simulated with the 'meta' device)."""
    inputs = scan_inputs()
    inputs[field] = inputs[field].to("meta")
    with pytest.raises(ValueError, match=rf"{field} is on meta but x is on cpu"):
        mosse_scan(**inputs)


def test_scan_cu_seqlens_device():
    inputs = scan_inputs(batch=1)
    inputs["initial_state"] = None
    with pytest.raises(ValueError, match="cu_seqlens is on meta but x is on cpu"):
        mosse_scan(**inputs, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32, device="meta"))


@pytest.mark.parametrize(
    "cu,batch,message",
    [
        (torch.tensor([0.0, 6.0]), 1, "cu_seqlens must be an int32"),
        (torch.tensor([[0, 6]], dtype=torch.int32), 1, "cu_seqlens must be 1-D"),
        (torch.tensor([0], dtype=torch.int32), 1, "cu_seqlens must be 1-D with n_seqs \\+ 1 >= 2"),
        (torch.tensor([0, 6], dtype=torch.int32), 2, "batch must be 1"),
        (torch.tensor([1, 6], dtype=torch.int32), 1, "must start at 0"),
        (torch.tensor([0, 5], dtype=torch.int32), 1, "end at T=6"),
        (torch.tensor([0, 4, 2, 6], dtype=torch.int32), 1, "non-decreasing"),
    ],
)
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_scan_cu_seqlens_values(cu, batch, message, impl):
    inputs = scan_inputs(batch=batch)
    inputs["initial_state"] = None
    with pytest.raises((ValueError, TypeError), match=message):
        mosse_scan(**inputs, cu_seqlens=cu, impl=impl)


def test_scan_initial_state_per_sequence_with_cu_seqlens():
    inputs = scan_inputs(batch=1)
    inputs["initial_state"] = torch.randn(1, 3, 5, 4)  # one state, but two sequences
    with pytest.raises(ValueError, match=r"initial_state must be \(n_seqs, E, N, P\) = \(2, 3, 5, 4\)"):
        mosse_scan(**inputs, cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32))


def test_scan_unknown_impl():
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        mosse_scan(**scan_inputs(), impl="fast")


def test_step_inputs():
    s = scan_inputs()
    state = s["initial_state"]
    x, dt, B, C = s["x"][:, 0], s["dt"][:, 0], s["B"][:, 0], s["C"][:, 0]
    mosse_step(state, x, dt, s["A"], B, C, s["D"])  # valid
    with pytest.raises(ValueError, match=r"state must be \(batch, E, N, P\)"):
        mosse_step(state[0], x, dt, s["A"], B, C)
    with pytest.raises(ValueError, match="do not match state"):
        mosse_step(state, x[:, :, :3], dt, s["A"], B, C)
    with pytest.raises(ValueError, match="do not match state"):
        mosse_step(state[:1], x, dt, s["A"], B, C)
    with pytest.raises(ValueError, match=r"A must be \(E,\)"):
        mosse_step(state, x, dt, s["A"][:2], B, C)
    with pytest.raises(ValueError, match="state is on meta but x is on cpu"):
        mosse_step(state.to("meta"), x, dt, s["A"], B, C)
    with pytest.raises(ValueError, match="B is on meta but x is on cpu"):
        mosse_step(state, x, dt, s["A"], B.to("meta"), C)
    with pytest.raises(TypeError, match="dt must be a floating-point tensor"):
        mosse_step(state, x, dt.long(), s["A"], B, C)


# --------------------------------------------------------------------- non-contiguous input


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_non_contiguous_scan_inputs_work(impl):
    """Transposed / strided views give the same result as contiguous copies."""
    b, T, E, P, N = 2, 9, 3, 4, 5
    x = torch.randn(b, E, T, P).transpose(1, 2)
    dt = torch.rand(E, b, T).permute(1, 2, 0)
    B = torch.randn(b, T, E, 2 * N)[..., ::2]
    C = torch.randn(N, b, T, E).permute(1, 2, 3, 0)
    D = torch.randn(P, E).T
    S0 = torch.randn(b, E, P, N).transpose(-1, -2)
    A = (-torch.rand(2 * E))[::2]
    for t in (x, dt, B, C, D, S0, A):
        assert not t.is_contiguous()
    y, s = mosse_scan(x, dt, A, B, C, D, S0, output_final_state=True, impl=impl, chunk_size=4)
    args = [t.contiguous() for t in (x, dt, A, B, C, D, S0)]
    y2, s2 = mosse_scan(*args, output_final_state=True, impl=impl, chunk_size=4)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(s, s2)
    # Packed, too.
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    y, s = mosse_scan(x[:1], dt[:1], A, B[:1], C[:1], D, S0, output_final_state=True, cu_seqlens=cu, impl=impl)
    y2, s2 = mosse_scan(*[t.contiguous() for t in (x[:1], dt[:1], A, B[:1], C[:1], D, S0)],
                        output_final_state=True, cu_seqlens=cu, impl=impl)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(s, s2)


def test_non_contiguous_conv_and_model_inputs_work(make_model):
    x = torch.randn(5, 9).T  # (9 rows, 5 channels)
    w = torch.randn(5, 3, 4).transpose(0, 1)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    cu = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    window = torch.randn(3, 5, 3).transpose(1, 2)
    a = segment_causal_conv(x, w, None, group, cu, initial_window=window, output_final_window=True)
    b = segment_causal_conv(x.contiguous(), w.contiguous(), None, group, cu, initial_window=window.contiguous(),
                            output_final_window=True)
    torch.testing.assert_close(a, b)

    model = make_model()
    ids = torch.randint(0, 64, (9, 2)).T
    mask = torch.ones(9, 2, dtype=torch.long).T
    assert not ids.is_contiguous()
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, model(ids.contiguous()).logits)
    emb = model.get_input_embeddings()(ids.contiguous()).transpose(0, 1).contiguous().transpose(0, 1)
    assert not emb.is_contiguous()
    torch.testing.assert_close(model(inputs_embeds=emb).logits, model(ids.contiguous()).logits)
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, model.generate(ids.contiguous(), max_new_tokens=3, do_sample=False))


# --------------------------------------------------------------------- config values

POSITIVE = [
    "vocab_size", "d_model", "n_layers", "ssm_experts", "ssm_top_k", "ssm_head_dim", "ssm_state_dim",
    "conv_kernel", "mlp_top_k", "mlp_hidden_dim", "chunk_size",
]  # mlp_experts may be 0 (no channel mixing, spec section 7): tests/models/test_switches.py


@pytest.mark.parametrize("field", POSITIVE)
@pytest.mark.parametrize("value", [0, -2, 1.5, True, "8"])
def test_config_sizes_must_be_positive_integers(tiny_config, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a positive integer"):
        tiny_config(**{field: value})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(ssm_experts=4, ssm_top_k=5), r"ssm_top_k \(5\) must be <= ssm_experts \(4\)"),
        (dict(mlp_experts=2, mlp_top_k=3), r"mlp_top_k \(3\) must be <= mlp_experts \(2\)"),
        (dict(state_update="sometimes"), r"state_update must be one of .*'sometimes'"),
        (dict(router_aux_loss_coef=-0.1), "router_aux_loss_coef must be a finite number >= 0"),
        (dict(router_z_loss_coef=-1.0), "router_z_loss_coef must be a finite number >= 0"),
        (dict(initializer_range=-0.02), "initializer_range must be a finite number >= 0"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps must be a finite number > 0"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min"),
        (dict(dt_min=0.0), "dt_min"),
        (dict(A_init_range=(0.0, 4.0)), "A_init_range"),
        (dict(A_init_range=(8.0, 4.0)), "A_init_range"),
    ],
)
def test_config_values(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_json_with_bad_value_fails_on_load(tmp_path, tiny_config):
    import json

    tiny_config().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["ssm_top_k"] = 9
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="ssm_top_k"):
        MossNetConfig.from_pretrained(tmp_path)
