"""MossNetModel / MossNetForCausalLM forward (spec sections 1, 4, 6): outputs, losses by hand,
router statistics, gradient checkpointing, packed documents, padding, torch.compile."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from mossnet import MossNetForCausalLM, MossNetModel


def router_top_k(config, name):
    return config.ssm_top_k if name.endswith("mixer") else config.mlp_top_k


def test_forward_outputs(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 9))
    out = model(ids, labels=ids, output_router_stats=True)
    assert out.logits.shape == (2, 9, 64) and out.logits.dtype == torch.float32
    assert out.loss.ndim == 0 and out.aux_loss.ndim == 0 and out.lm_loss.ndim == 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    # Cross-entropy by hand: token t predicts token t+1.
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, want)
    names = {f"layers.{i}.{kind}" for i in range(2) for kind in ("mixer", "mlp")}
    assert set(out.router_load) == set(out.router_logits) == names
    for name in names:
        assert out.router_logits[name].shape == (18, 4)
        assert int(out.router_load[name].sum()) == 18 * router_top_k(model.config, name)
    # Without labels: no loss, still logits and aux_loss.
    out = model(ids)
    assert out.loss is None and out.logits.shape == (2, 9, 64) and out.aux_loss is not None


def test_generation_calls_skip_the_router_losses(make_model):
    """Filling or advancing a generation cache without gradients or labels computes no router
    losses (aux_loss None); the same call with gradients, or asking for router statistics, still
    gives the aux loss, equal to the one without a cache."""
    model = make_model().eval()
    ids = torch.randint(0, 64, (2, 9))
    want = model(ids).aux_loss
    with torch.no_grad():
        prefill = model(ids, use_cache=True)
        assert prefill.aux_loss is None
        assert model(ids[:, :1], cache=prefill.cache).aux_loss is None  # a decode step
        stats = model(ids, use_cache=True, output_router_stats=True)
        torch.testing.assert_close(stats.aux_loss, want)
        torch.testing.assert_close(model(ids, use_cache=False).aux_loss, want)  # no cache: still reported
    torch.testing.assert_close(model(ids, use_cache=True).aux_loss, want)


def test_aux_loss_by_hand_with_padding(make_model):
    """aux_loss = aux_coef * mean_routers(E sum_e f_e P_e) + z_coef * mean_routers(mean lse^2),
    over the valid tokens only, from the returned router logits; the loads too."""
    model = make_model(router_aux_loss_coef=0.3, router_z_loss_coef=0.05)
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, 7:] = 0
    out = model(ids, attention_mask=mask, labels=ids, output_router_stats=True)
    valid = mask.flatten().bool()
    auxes, zs = [], []
    for name, logits in out.router_logits.items():
        k = router_top_k(model.config, name)
        E = logits.shape[-1]
        probs = logits.softmax(-1)
        load = torch.bincount(probs.topk(k, -1).indices[valid].flatten(), minlength=E)
        assert torch.equal(out.router_load[name], load), name  # padding excluded
        f = load.float() / (k * valid.sum())
        auxes.append(E * (f * probs[valid].mean(0)).sum())
        zs.append(torch.logsumexp(logits[valid], -1).pow(2).mean())
    want = 0.3 * torch.stack(auxes).mean() + 0.05 * torch.stack(zs).mean()
    torch.testing.assert_close(out.aux_loss, want)
    # The LM loss ignores padding positions (as labels and as inputs).
    labels = ids.masked_fill(mask == 0, -100)
    want_lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, want_lm)


def test_dense_single_expert_model_has_no_routers(make_model):
    model = make_model(ssm_experts=1, ssm_top_k=1, mlp_experts=1, mlp_top_k=1)
    ids = torch.randint(0, 64, (2, 7))
    out = model(ids, labels=ids, output_router_stats=True)
    assert out.router_load == {} and float(out.aux_loss) == 0.0
    out.loss.backward()


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_backward_reaches_every_parameter(make_model, state_update):
    model = make_model(state_update=state_update, mlp_shared_expert=True).train()
    ids = torch.randint(0, 64, (3, 11))
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_inputs_embeds_equal_input_ids(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 8))
    a = model(ids).logits
    b = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    assert torch.equal(a, b)


def test_logits_to_keep_and_hidden_states(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 8))
    full = model(ids, output_hidden_states=True)
    assert len(full.hidden_states) == model.config.n_layers + 1
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 64)
    torch.testing.assert_close(last, full.logits[:, -1:])


def test_lm_head_is_tied(make_model):
    model = make_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    untied = make_model(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_base_model_alone(make_model):
    model = make_model()
    base = MossNetModel(model.config)
    base.load_state_dict(model.model.state_dict())
    base.eval()
    ids = torch.randint(0, 64, (1, 6))
    torch.testing.assert_close(base(ids).last_hidden_state, model.model(ids).last_hidden_state)


@pytest.mark.parametrize("enable", ["gradient_checkpointing_enable", "activation_checkpointing_enable"])
def test_gradient_checkpointing_same_gradients(make_model, enable):
    model = make_model(n_layers=3).train()
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    out = model(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    if not hasattr(model, enable):
        pytest.skip(f"this transformers has no {enable}")
    calls = []
    model.model.layers[0].mixer.register_forward_hook(lambda *a: calls.append(1))
    with warnings.catch_warnings():  # transformers 5.24 deprecates the old name (FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        getattr(model, enable)()
    out2 = model(ids, attention_mask=mask, labels=ids)
    out2.loss.backward()
    assert len(calls) == 2, "the block was not recomputed in the backward pass"
    assert torch.equal(out.loss, out2.loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-6, atol=1e-7, msg=n)


# --------------------------------------------------------------------- packed documents


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_packed_documents_equal_separate_runs(make_model, state_update, use_cache):
    """position_ids restarting at 0 (Hugging Face's packed batches): each document gives the
    logits it gives alone; the conv and the scan restart at every document."""
    model = make_model(state_update=state_update)
    docs = [[5, 3, 4], [6, 1, 5]]  # two rows of 12 tokens, several documents each
    ids = torch.randint(0, 64, (2, 12))
    position_ids = torch.cat([torch.cat([torch.arange(n) for n in row])[None] for row in docs])
    packed = model(ids, position_ids=position_ids, use_cache=use_cache, output_router_stats=True)
    total_load = {}
    for r, row in enumerate(docs):
        start = 0
        for n in row:
            alone = model(ids[r : r + 1, start : start + n], use_cache=False, output_router_stats=True)
            torch.testing.assert_close(packed.logits[r, start : start + n], alone.logits[0], rtol=1e-5, atol=1e-5)
            for name, load in alone.router_load.items():
                total_load[name] = total_load.get(name, 0) + load
            start += n
    for name, load in packed.router_load.items():
        assert torch.equal(load, total_load[name])


def test_packed_documents_with_padding(make_model):
    """Packed rows that end in padding (position 0, attention_mask 0), as collators make them."""
    model = make_model()
    ids = torch.randint(0, 64, (2, 12))
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[1] * 8 + [0] * 4, [1] * 12])
    out = model(ids, attention_mask=mask, position_ids=position_ids, use_cache=False, output_router_stats=True)
    n_valid = 0
    for r, lo, hi in [(0, 0, 5), (0, 5, 8), (1, 0, 4), (1, 4, 12)]:
        alone = model(ids[r : r + 1, lo:hi], use_cache=False).logits
        torch.testing.assert_close(out.logits[r, lo:hi], alone[0], rtol=1e-5, atol=1e-5)
        n_valid += hi - lo
    for name, load in out.router_load.items():
        assert int(load.sum()) == n_valid * router_top_k(model.config, name)


def test_packed_documents_gradients_equal_separate_runs(make_model):
    model = make_model().train()
    ids = torch.randint(0, 64, (1, 10))
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    packed = model(inputs_embeds=x, position_ids=position_ids).logits
    g = torch.randn_like(packed)
    (packed * g).sum().backward()
    for lo, hi in [(0, 4), (4, 7), (7, 10)]:
        xi = x.detach()[:, lo:hi].clone().requires_grad_(True)
        (model(inputs_embeds=xi).logits * g[:, lo:hi]).sum().backward()
        a, b = x.grad[:, lo:hi], xi.grad
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4  # spec section 5, fp32


# --------------------------------------------------------------------- padding


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_affects_nothing(make_model, state_update, side):
    """attention_mask = 0 positions: other pad ids or pad embedding values give bit-identical
    outputs at the real positions, the real positions equal each prompt alone, and padding
    adds no router load."""
    model = make_model(state_update=state_update)
    lengths = [9, 4, 6]
    T = max(lengths)
    ids = torch.randint(0, 64, (3, T))
    mask = torch.zeros(3, T, dtype=torch.long)
    for r, n in enumerate(lengths):
        if side == "left":
            mask[r, T - n :] = 1
        else:
            mask[r, :n] = 1
    real = mask.bool()
    out = model(ids, attention_mask=mask, output_router_stats=True)

    other = torch.where(real, ids, torch.randint(0, 64, ids.shape))
    out2 = model(other, attention_mask=mask, output_router_stats=True)
    assert torch.equal(out.logits[real], out2.logits[real])
    emb = model.get_input_embeddings()(ids)
    emb3 = torch.where(real[..., None], emb, torch.randn_like(emb) * 100)
    out3 = model(inputs_embeds=emb3, attention_mask=mask, output_router_stats=True)
    assert torch.equal(out.logits[real], out3.logits[real])
    assert torch.equal(out.aux_loss, out3.aux_loss)

    load = {}
    for r in range(3):
        alone = model(ids[r : r + 1][real[r : r + 1]][None], output_router_stats=True)
        torch.testing.assert_close(out.logits[r][real[r]], alone.logits[0], rtol=1e-5, atol=1e-5)
        for name, l in alone.router_load.items():
            load[name] = load.get(name, 0) + l
    for name in out.router_load:
        assert torch.equal(out.router_load[name], load[name])
        assert torch.equal(out.router_load[name], out2.router_load[name])


# --------------------------------------------------------------------- torch.compile


@pytest.mark.slow
@pytest.mark.parametrize("switches", [{}, dict(ssm_experts=3, ssm_top_k=3, state_update="all")])
def test_the_cpu_training_forward_traces_with_one_graph_break(make_model, switches):
    """MoE layers that read group sizes back to the host break torch.compile's graph at every
    expert. On the CPU the only break left is the token-id range check (a host read by design,
    run eagerly): the per-expert loop is a custom op, and the router's loss cache takes no lock.
    Dynamo only (torch._dynamo.explain): no Inductor compile."""
    model = make_model(n_layers=2, **switches).train()
    ids = torch.randint(0, 64, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # padding: dropped rows in the expert products
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask, labels=ids)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count <= 1, reasons


@pytest.mark.slow
def test_torch_compile_forward_cpu(make_model):
    """torch.compile of the forward on CPU gives the eager logits."""
    model = make_model(n_layers=1)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        start = time.perf_counter()
        got = torch.compile(model)(ids, use_cache=False).logits
        elapsed = time.perf_counter() - start
    print(f"torch.compile + first call: {elapsed:.1f} s")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
