"""``mossnet.execution``: the ExecutionPolicy (built once from config, environment and
arguments, passed down explicitly) and the one home of the torch-state checks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import mossnet
from mossnet.errors import ConfigError
from mossnet.execution import ExecutionPolicy
from mossnet.layers import mosse as mosse_module
from mossnet.ops.moe import grouped_linear

SRC = Path(mossnet.__file__).parent


def test_build_reads_config_then_environment_then_arguments(tiny_config):
    cfg = tiny_config(scan_impl="reference", chunk_size=16)
    env = {"MOSSNET_TRITON_LOWP": "0", "MOSSNET_TRITON_AUTOTUNE": "0", "MOSSNET_TRITON_SPECIALIZE": "1"}
    p = ExecutionPolicy.build(cfg, env=env, chunk_size=32, decode_graph=False)
    assert (p.scan_impl, p.chunk_size, p.decode_graph) == ("reference", 32, False)
    assert (p.triton_lowp, p.triton_autotune, p.triton_specialize) == (False, False, True)
    q = ExecutionPolicy.build(env={})
    assert (q.triton_lowp, q.triton_autotune, q.triton_specialize) == (True, True, False)
    assert q == ExecutionPolicy()


@pytest.mark.parametrize("change,match", [
    (dict(scan_impl="bogus"), "scan_impl"), (dict(expert_matmul="gemm"), "expert_matmul"),
    (dict(chunk_size=0), "chunk_size"), (dict(decode_graph="yes"), "decode_graph"),
])
def test_bad_values_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        ExecutionPolicy().replace(**change)
    with pytest.raises(ConfigError, match="unknown setting"):
        ExecutionPolicy.build(env={}, compact_routing=False)


def test_policy_is_frozen_and_hashable():
    p = ExecutionPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.decode_graph = False
    assert {p: 1}[ExecutionPolicy()] == 1 and p.as_dict()["scan_impl"] == "auto"


def test_model_holds_one_policy_and_the_documented_switches_go_through_it(make_model):
    model = make_model(scan_impl="chunked")
    assert model.execution_policy is model.model.execution_policy and model.execution_policy.scan_impl == "chunked"
    model.cuda_graph_decode = False
    model.cuda_graph_compile = True
    model.model.validate_token_ids = False
    p = model.execution_policy
    assert (p.decode_graph, p.decode_graph_compile, p.validate_token_ids) == (False, True, False)
    assert not model.cuda_graph_decode and model.cuda_graph_compile and not model.model.validate_token_ids
    assert not any(hasattr(m, "compact_routing") for m in model.modules())


def test_policy_is_passed_down_to_every_layer(make_model, monkeypatch):
    """The scan and expert-matmul choices reach the layers through the forward arguments; a
    per-call policy overrides the model's; results agree across implementations."""
    model = make_model(chunk_size=16)
    seen = {"scan": set(), "matmul": set()}
    scan, grouped = mosse_module.mosse_scan, grouped_linear

    def spy_scan(*args, impl="auto", **kwargs):
        seen["scan"].add(impl)
        return scan(*args, impl=impl, **kwargs)

    def spy_grouped(*args, impl="auto", **kwargs):
        seen["matmul"].add(impl)
        return grouped(*args, impl=impl, **kwargs)

    monkeypatch.setattr(mosse_module, "mosse_scan", spy_scan)
    monkeypatch.setattr(mosse_module, "grouped_linear", spy_grouped)
    monkeypatch.setattr("mossnet.layers.moe_mlp.grouped_linear", spy_grouped)
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        base = model(ids).logits
        assert seen == {"scan": {"auto"}, "matmul": {"auto"}}
        seen["scan"].clear(), seen["matmul"].clear()
        other = model(ids, execution_policy=model.execution_policy.replace(scan_impl="reference",
                                                                            expert_matmul="all_experts")).logits
    assert seen == {"scan": {"reference"}, "matmul": {"all_experts"}}
    torch.testing.assert_close(other, base, rtol=1e-5, atol=1e-5)


def test_decode_direct_max_pairs_picks_the_mlp_decode_path(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (3, 6))
    with torch.no_grad():
        cache = model(ids[:, :5], use_cache=True).cache
        direct = model(ids[:, 5:], cache=cache).logits
        cache = model(ids[:, :5], use_cache=True).cache
        grouped = model(ids[:, 5:], cache=cache,
                        execution_policy=model.execution_policy.replace(decode_direct_max_pairs=1)).logits
    torch.testing.assert_close(direct, grouped, rtol=1e-5, atol=1e-6)


def test_describe_names_what_runs_here():
    rows = dict(ExecutionPolicy(scan_impl="chunked").describe(torch.device("cpu")))
    assert rows["mosse_scan (training / prefill)"].startswith("chunked")
    assert rows["expert matmuls (bf16)"].startswith("loop")
    assert "autotune=True" in rows["triton kernels"]


def _files_mentioning(pattern: str, allowed: set[str]) -> list[str]:
    hits = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel not in allowed and re.search(pattern, path.read_text()):
            hits.append(rel)
    return sorted(hits)


def test_torch_state_checks_live_in_execution_py():
    assert _files_mentioning(r"is_compiling|is_exporting|is_current_stream_capturing", {"execution.py"}) == []


def test_triton_environment_is_read_by_the_policy_only():
    """No model code reads the MOSSNET_TRITON_* variables but the policy's ``build``. The Triton
    module itself (ops/mosse/triton*) still reads them until its functions take the policy's
    values, which ``mosse_scan(fast_path_options=policy.triton_options())`` already passes to
    any fast path that accepts them."""
    readers = _files_mentioning(r"environ\.get\(\s*[\"']MOSSNET_TRITON_", set())
    assert all(f.startswith("ops/mosse/triton") for f in readers), readers
    assert "MOSSNET_TRITON_AUTOTUNE" in (SRC / "execution.py").read_text()


def test_triton_options_carry_every_triton_setting():
    """What the layer hands the Triton scan (``fast_path_options``) is exactly the policy's Triton
    settings, the bf16 chunk states included, under ``TritonScanOptions``' field names."""
    import dataclasses

    from mossnet.ops.mosse.triton.options import TritonScanOptions  # imports no Triton

    policy = ExecutionPolicy(triton_lowp=False, triton_autotune=False, triton_specialize=True, triton_state_bf16=True)
    options = TritonScanOptions(**policy.triton_options())
    assert options == TritonScanOptions(specialize=True, autotune=False, lowp=False, state_bf16=True)
    assert {f.name for f in dataclasses.fields(TritonScanOptions)} == set(policy.triton_options())
