"""Spec section 7's switches through export: the ``torch.export`` decode step and prefill block
equal the eager wrappers (which equal cached generation, tests/export/test_export.py), with
the switches' own conv-state layouts; and one ONNX export (skipped without the export extra)
whose graphs run by onnxruntime equal the eager step. ``ssm_share_bc`` is the one whose conv
state holds two kinds of windows that the step updates in place through views; the shared
conv is exported with the other two switches. One layer, one scan chunk: tracing dominates."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.export import DecodeStep, Prefill, export_decode_step, export_prefill, initial_states, state_names

CFG = dict(vocab_size=96, d_model=32, n_layers=1, ssm_experts=4, ssm_top_k=2, ssm_head_dim=8, ssm_state_dim=4,
           mlp_experts=4, mlp_top_k=2, mlp_hidden_dim=32, chunk_size=8)
BLOCK = 8
SWITCHES = {
    "share_bc": dict(ssm_share_bc=True),
    "all_three": dict(ssm_conv_placement="shared", ssm_share_bc=True, mlp_experts=0),
}


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def make(switch):
    torch.manual_seed(0)
    model = MossNetForCausalLM(MossNetConfig(**{**CFG, **SWITCHES[switch]})).eval()
    with torch.no_grad():  # non-trivial routing
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(0, 0.5)
    return model


def random_states(config):
    return [torch.randn_like(s) for s in initial_states(config, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_torch_export_decode_step_and_prefill_equal_eager(switch):
    model = make(switch)
    step, prefill = export_decode_step(model), export_prefill(model, length=BLOCK)
    for program, wrapper, T in ((step, DecodeStep(model), 1), (prefill, Prefill(model), BLOCK)):
        ids, states = torch.randint(0, CFG["vocab_size"], (1, T)), random_states(model.config)
        with torch.no_grad():
            want = wrapper(ids, *states)
            got = program.module()(ids, *states)
        assert len(got) == len(want) == 1 + 2 * CFG["n_layers"]
        for g, w in zip(got, want):
            assert g.shape == w.shape and not torch.isnan(g).any() and rel_err(g, w) < 1e-5


def test_decode_step_wrapper_continues_cached_generation():
    """The wrapper's explicit states are the cache's (the packed window of ``ssm_share_bc``)."""
    model = make("share_bc")
    ids = torch.randint(0, CFG["vocab_size"], (2, 11))
    with torch.no_grad():
        cache = model(ids[:, :10], use_cache=True).cache
        logits, *new = DecodeStep(model)(ids[:, 10:], *[s.clone() for s in cache.conv_states + cache.ssm_states])
        want = model(ids[:, 10:], cache=cache).logits[:, -1]
    assert cache.conv_states[0].shape == (2, 4 * 3 * 8 + 3 * 2 * 4)
    assert rel_err(logits, want) < 1e-5
    for got, ref in zip(new, cache.conv_states + cache.ssm_states):
        assert rel_err(got, ref) < 1e-5


onnx_missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(onnx_missing), reason=f"needs {', '.join(onnx_missing)} (the export extra)")
def test_onnx_decode_step_equals_eager(tmp_path):
    """The decode step is the graph that updates the two kinds of windows in place through
    views (what the ONNX exporter's decomposition must replay); the prefill graph returns new
    states and goes through the same exporter as the default model's (test_export.py)."""
    import onnxruntime as ort

    from mossnet.export.onnx import _to_onnx

    model = make("share_bc")
    path = str(tmp_path / "decode_step.onnx")
    _to_onnx(export_decode_step(model), path, CFG["n_layers"], 18)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = state_names(CFG["n_layers"])
    for _ in range(2):
        ids, states = torch.randint(0, CFG["vocab_size"], (1, 1)), random_states(model.config)
        with torch.no_grad():
            want = DecodeStep(model)(ids, *states)
        got = session.run(None, {"input_ids": ids.numpy(), **{n: s.numpy() for n, s in zip(names, states)}})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert rel_err(torch.from_numpy(g), w) < 1e-4
