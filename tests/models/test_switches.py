"""Spec section 7's switches at model level: chunked prefill + one-token decode equals one full
forward, greedy ``generate`` equals the argmax of full forwards, left padding, save/load,
parameter counts and state bytes from the spec's shapes, ``mlp_experts=0``, and the refusals.
(The layer against its reference: tests/layers/test_mosse_switches.py; export:
tests/export/test_export_switches.py.)"""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetCache, MossNetConfig, MossNetForCausalLM
from mossnet.errors import ConfigError
from mossnet.models.parameter_count import parameter_counts, state_bytes_per_layer

SWITCHES = {
    "shared_conv": dict(ssm_conv_placement="shared"),
    "share_bc": dict(ssm_share_bc=True),
    "shared_conv+share_bc": dict(ssm_conv_placement="shared", ssm_share_bc=True),
    "no_mlp": dict(mlp_experts=0),
    "all_three": dict(ssm_conv_placement="shared", ssm_share_bc=True, mlp_experts=0),
}


def full_forward_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_chunked_prefill_then_decode_equals_one_forward(make_model, switch, state_update):
    """Teacher-forced: two prefill chunks, then one token at a time through the cache (the
    recurrent step, and the sequence path with T = 1), equals one full forward."""
    model = make_model(state_update=state_update, **SWITCHES[switch])
    ids = torch.randint(0, 64, (2, 14))
    full = full_forward_logits(model, ids)
    with torch.no_grad():
        first = model(ids[:, :5], use_cache=True)
        cache = first.cache
        logits = [first.logits, model(ids[:, 5:9], cache=cache).logits]
        for t in range(9, 14):
            mask = None if t % 2 else torch.ones(2, 1)  # odd t: the recurrent step
            logits.append(model(ids[:, t:t + 1], attention_mask=mask, cache=cache).logits)
    got = torch.cat(logits, dim=1)
    assert float((got - full).abs().max() / full.abs().max()) < 1e-5


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_greedy_generate_equals_argmax_of_full_forwards(make_model, switch):
    model = make_model(**SWITCHES[switch])
    ids = torch.randint(0, 64, (2, 6))
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    want = ids
    for _ in range(6):
        want = torch.cat([want, full_forward_logits(model, want)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, want)
    assert len(set(out[:, 6:].flatten().tolist())) > 2, "degenerate test: the model repeats one token"


@pytest.mark.parametrize("switch", ["shared_conv", "share_bc"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(make_model, switch):
    """Padding enters no conv, the full-sequence one included (spec section 2.8)."""
    model = make_model(**SWITCHES[switch])
    prompts = [torch.randint(1, 64, (n,)) for n in (3, 7)]
    T = 7
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):], mask[r, T - len(p):] = p, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for r, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(out[r, T:], alone[0, len(p):]), r


@pytest.mark.parametrize("switch", ["share_bc", "all_three"])
def test_save_load_round_trip_is_bit_identical(make_model, tmp_path, switch):
    model = make_model(**SWITCHES[switch])
    with torch.no_grad():  # every tensor away from its init value (constant inits would hide a re-init)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    loaded = MossNetForCausalLM.from_pretrained(tmp_path).eval()
    for key, value in SWITCHES[switch].items():
        assert getattr(loaded.config, key) == value
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 64, (2, 7))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False),
                       loaded.generate(ids, max_new_tokens=3, do_sample=False))


# ------------------------------------------------------------------ sizes, from the spec's shapes


def expected_counts(cfg) -> tuple[int, int]:
    """(total, active) parameters from the shapes of spec sections 1-3 and 7, written out."""
    D, E, k, P, N, K = (cfg.d_model, cfg.ssm_experts, cfg.ssm_top_k, cfg.ssm_head_dim, cfg.ssm_state_dim,
                        cfg.conv_kernel)
    shared_conv = cfg.ssm_conv_placement == "shared"
    C = P if cfg.ssm_share_bc else P + 2 * N  # what each expert projects besides z and dt
    per_expert = (P + C + 1) * D + 1 + 1 + P + P + D * P  # in_proj, dt_bias, A_log, D, norm, out_proj
    per_expert += 0 if shared_conv else C * K + C  # its own conv
    per_expert += P if cfg.ssm_z_bias else 0
    everyone = E * D if E > 1 else 0  # the router
    sequence_channels = D if shared_conv else (2 * N if cfg.ssm_share_bc else 0)
    everyone += sequence_channels * (K + 1)  # the full-sequence conv: taps and bias
    everyone += 2 * N * D if cfg.ssm_share_bc else 0  # the shared B, C projection
    routed = k / E if cfg.state_update == "routed" else 1.0  # ("all": only out_proj is routed)
    mixer_total = E * per_expert + everyone
    mixer_active = E * (per_expert - D * P) * routed + E * D * P * k / E + everyone
    H, Em = cfg.mlp_hidden_dim, cfg.mlp_experts
    mlp_total = mlp_active = 0
    if Em == 1:
        mlp_total = mlp_active = D + 3 * H * D  # mlp_norm + dense SwiGLU
    elif Em > 1:
        mlp_total = D + Em * 3 * H * D + Em * D
        mlp_active = D + cfg.mlp_top_k * 3 * H * D + Em * D
    other = cfg.vocab_size * D + D  # tied embedding, final norm
    per_layer = D  # mixer_norm
    total = other + cfg.n_layers * (per_layer + mixer_total + mlp_total)
    active = other + cfg.n_layers * (per_layer + mixer_active + mlp_active)
    return total, round(active)


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("switch", sorted(SWITCHES) + ["default"])
def test_parameter_counts_follow_the_shapes(tiny_config, switch, state_update):
    cfg = tiny_config(state_update=state_update, **SWITCHES.get(switch, {}))
    model = MossNetForCausalLM(cfg)
    counts = parameter_counts(model)
    total, active = expected_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == total
    assert abs(counts["active"] - active) <= cfg.n_layers * 2, (counts["active"], active)  # per-tensor rounding


@pytest.mark.parametrize("switch", sorted(SWITCHES) + ["default"])
def test_state_bytes_are_what_the_cache_holds(tiny_config, switch):
    cfg = tiny_config(**SWITCHES.get(switch, {}))
    E, P, N, K, D = cfg.ssm_experts, cfg.ssm_head_dim, cfg.ssm_state_dim, cfg.conv_kernel, cfg.d_model
    windows = {"shared_conv": (K - 1) * D, "shared_conv+share_bc": (K - 1) * D, "all_three": (K - 1) * D,
               "share_bc": (K - 1) * (E * P + 2 * N)}.get(switch, E * (K - 1) * (P + 2 * N))
    assert state_bytes_per_layer(cfg) == 4 * (E * N * P + windows)
    cache = MossNetCache(cfg, batch_size=3)
    assert cache.nbytes() == 3 * cfg.n_layers * state_bytes_per_layer(cfg)


# ------------------------------------------------------------------ mlp_experts = 0


def test_no_mlp_block_has_no_mlp_parameters_reports_or_aux_loss(make_model):
    model = make_model(mlp_experts=0).train()
    assert all(block.mlp is None and block.mlp_norm is None for block in model.model.layers)
    assert not [name for name in model.state_dict() if ".mlp" in name]
    ids = torch.randint(0, 64, (2, 9))
    out = model(ids, labels=ids, output_router_stats=True)
    assert sorted(out.router_load) == ["layers.0.mixer", "layers.1.mixer"]
    single = make_model(mlp_experts=0, ssm_experts=1, ssm_top_k=1)
    assert single(ids, labels=ids).aux_loss == 0  # no router anywhere


def test_no_mlp_layer_is_the_mixer_residual_only(make_model):
    """h = h + MoSSE(RMSNorm(h)) and nothing else."""
    model = make_model(mlp_experts=0)
    block = model.model.layers[0]
    h = torch.randn(2, 5, 16)
    with torch.no_grad():
        out = block(h)[0]
        want = h + block.mixer(block.mixer_norm(h))[0].float()
    assert torch.equal(out, want)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(ssm_conv_placement="sharded"),
         r"ssm_conv_placement must be one of \('expert', 'shared'\), got 'sharded'"),
        (dict(ssm_conv_placement=None), "ssm_conv_placement must be one of"),
        (dict(ssm_share_bc="yes"), "ssm_share_bc must be true or false"),
        (dict(ssm_share_bc=1), "ssm_share_bc must be true or false"),
        (dict(mlp_experts=-1), r"mlp_experts must be an integer >= 0"),
        (dict(mlp_experts=1.5), r"mlp_experts must be an integer >= 0"),
        (dict(mlp_experts=True), r"mlp_experts must be an integer >= 0"),
        (dict(mlp_experts=0, mlp_shared_expert=True), "mlp_shared_expert needs a channel-mixing block"),
    ],
)
def test_bad_switch_values_are_refused(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_switch_defaults_and_json_round_trip(tmp_path):
    cfg = MossNetConfig()
    assert cfg.ssm_conv_placement == "expert" and cfg.ssm_share_bc is False
    on = MossNetConfig.from_preset("tiny", ssm_conv_placement="shared", ssm_share_bc=True, mlp_experts=0)
    on.save_pretrained(tmp_path)
    again = MossNetConfig.from_pretrained(tmp_path)
    assert (again.ssm_conv_placement, again.ssm_share_bc, again.mlp_experts) == ("shared", True, 0)
    assert again.mlp_top_k == on.mlp_top_k  # unused without MLP experts, kept as given


# ------------------------------------------------------------------ GPU (skipped without CUDA)

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("switch", ["share_bc", "all_three"])
def test_graph_decode_equals_eager(switch, autocast):
    """The captured decode step updates the switches' windows in place like the eager one."""
    from test_cuda_graph_decode import _eager_and_graph

    torch.manual_seed(0)
    model = MossNetForCausalLM(MossNetConfig.from_preset("tiny", n_layers=2, **SWITCHES[switch])).cuda().eval()
    prompt = torch.randint(0, model.config.vocab_size, (3, 13), device="cuda")
    (eager, eager_cache), (graph, graph_cache) = _eager_and_graph(model, prompt, 6, autocast)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(graph_cache.conv_states + graph_cache.ssm_states, eager_cache.conv_states + eager_cache.ssm_states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("switch", ["shared_conv", "share_bc", "all_three"])
def test_training_step_makes_no_host_sync(switch):
    """bf16 autocast forward + backward with padding (Triton scan, sync-free expert matmuls)."""
    from test_cuda_graph_decode import _no_sync

    torch.manual_seed(0)
    cfg = MossNetConfig.from_preset("tiny", n_layers=2, d_model=128, **SWITCHES[switch])
    model = MossNetForCausalLM(cfg).cuda().train()
    model.model.validate_token_ids = False
    ids = torch.randint(0, cfg.vocab_size, (2, 96), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask, labels=ids, output_router_stats=True)
        out.loss.backward()
        return out.loss

    step()
    model.zero_grad(set_to_none=True)
    assert torch.isfinite(_no_sync(step)).item()
