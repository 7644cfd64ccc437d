"""Decode has one entry point per module, its ``forward``: a generated token enters every
MossNetBlock, MoSSE and MoEMLP through ``forward(..., decode=True)``, so wrappers that only
hook ``forward`` (PEFT's ParamWrapper, FSDP, export) see decode as they see training."""

from __future__ import annotations

import pytest
import torch

from mossnet.export import DecodeStep, initial_states
from mossnet.layers.moe_mlp import MoEMLP
from mossnet.layers.mosse import MoSSE
from mossnet.models.mossnet.modeling_mossnet import MossNetBlock

DECODING_MODULES = (MossNetBlock, MoSSE, MoEMLP)


def count_decode_calls(model) -> dict:
    """{module name: number of forward calls with decode=True}, filled by forward pre-hooks."""
    calls = {}

    def hook(name):
        def record(module, args, kwargs):
            if kwargs.get("decode"):
                calls[name] = calls.get(name, 0) + 1
        return record

    for name, module in model.named_modules():
        if isinstance(module, DECODING_MODULES):
            module.register_forward_pre_hook(hook(name), with_kwargs=True)
    return calls


def decoding_module_names(model) -> set:
    return {name for name, m in model.named_modules() if isinstance(m, DECODING_MODULES)}


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_every_module_decodes_through_forward(make_model, state_update):
    model = make_model(state_update=state_update)
    calls = count_decode_calls(model)
    model.generate(torch.randint(0, 64, (2, 6)), max_new_tokens=4, do_sample=False)
    # The prompt is the sequence path; the 3 tokens after the first are decode steps.
    assert set(calls) == decoding_module_names(model)
    assert set(calls.values()) == {3}


def test_export_decode_step_goes_through_forward(make_model):
    model = make_model()
    calls = count_decode_calls(model)
    DecodeStep(model)(torch.randint(0, 64, (1, 1)), *initial_states(model.config, 1))
    assert set(calls) == decoding_module_names(model) and set(calls.values()) == {1}


def test_no_module_has_a_side_door_step():
    """Nothing may call a custom ``.step()``: a wrapper would not see it."""
    for cls in DECODING_MODULES:
        assert not hasattr(cls, "step"), f"{cls.__name__}.step exists: decode must enter through forward"


def test_decode_equals_the_sequence_forward_of_one_token(make_model):
    """The decode entry and the sequence path of a one-token chunk (a padding mask forces the
    sequence path) give the same logits and the same cache."""
    model = make_model()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        a = model(ids[:, :8], use_cache=True).cache
        b = model(ids[:, :8], use_cache=True).cache
        via_decode = model(ids[:, 8:], cache=a).logits
        via_sequence = model(ids[:, 8:], attention_mask=torch.ones(2, 1), cache=b).logits
    torch.testing.assert_close(via_decode, via_sequence, rtol=1e-5, atol=1e-6)
    for x, y in zip(a.conv_states + a.ssm_states, b.conv_states + b.ssm_states):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_mosse_decode_needs_one_token_and_both_states(tiny_config):
    layer = MoSSE(tiny_config())
    u = torch.randn(2, 1, tiny_config().d_model)
    with pytest.raises(ValueError, match="one token per row"):
        layer(u, decode=True)
    with pytest.raises(ValueError, match="one token per row"):
        layer(torch.cat([u, u], 1), None, torch.zeros(2, 4, 3, 16), torch.zeros(2, 4, 4, 8), decode=True)
