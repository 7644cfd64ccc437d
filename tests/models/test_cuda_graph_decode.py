"""CUDA-graph decode (``cuda_graph_decode.py``) and the no-host-sync contract of issue 4.

CPU: the logic paths (cache binding, when the captured path applies, the token-id check switch,
the sync-free grouped-linear executions). GPU (marked ``gpu``): graph-replayed decode equals
eager decode, through the raw step and through ``generate``; two interleaved caches stay
apart; the training step, the prefill and the eager decode step make no host synchronisation
(``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.models.mossnet.cache import MossNetCache
from mossnet.models.mossnet.cuda_graph_decode import (
    StaticCacheSlot,
    graph_decode_applicable,
    graph_decoders,
    reset_graph_decoders,
)
from mossnet.ops.moe.grouped_linear import _all_experts_then_pick, _grouped_mm, grouped_linear

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def tiny_model(**overrides) -> MossNetForCausalLM:
    torch.manual_seed(0)
    cfg = MossNetConfig.from_preset("tiny", n_layers=2, **overrides)
    return MossNetForCausalLM(cfg).eval()


# ---------------------------------------------------------------------------- CPU: logic
def _filled_cache(config, batch, seed):
    g = torch.Generator().manual_seed(seed)
    cache = MossNetCache(config, batch)
    for t in cache.conv_states + cache.ssm_states:
        t.copy_(torch.randn(t.shape, generator=g))
    return cache


def test_slot_bind_moves_state_in_and_keeps_caches_apart():
    config = MossNetConfig.from_preset("tiny", n_layers=2)
    slot = StaticCacheSlot(config, batch_size=2)
    a, b = _filled_cache(config, 2, 0), _filled_cache(config, 2, 1)
    a_state = [t.clone() for t in a.conv_states + a.ssm_states]
    b_state = [t.clone() for t in b.conv_states + b.ssm_states]

    slot.bind(a)
    assert slot.is_bound(a)
    for t, want in zip(slot.static_cache.conv_states + slot.static_cache.ssm_states, a_state):
        assert torch.equal(t, want)
    # a step "in the graph" updates the static tensors, i.e. a's state
    slot.static_cache.ssm_states[0].add_(1.0)
    assert torch.equal(a.ssm_states[0], a_state[2] + 1.0)  # conv_states come first (2 layers)

    slot.bind(b)  # a must get private copies of its (advanced) state first
    assert slot.is_bound(b) and not slot.is_bound(a)
    assert torch.equal(a.ssm_states[0], a_state[2] + 1.0)
    for t, want in zip(b.conv_states + b.ssm_states, b_state):
        assert torch.equal(t, want)
    slot.static_cache.ssm_states[0].zero_()
    assert torch.equal(a.ssm_states[0], a_state[2] + 1.0)  # untouched by b's steps

    slot.bind(b)  # binding again is a no-op
    assert slot.is_bound(b)
    with pytest.raises(ValueError, match="batch"):
        slot.bind(_filled_cache(config, 3, 2))


def test_graph_path_not_taken_on_cpu_and_eager_unchanged():
    model = tiny_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        out = model(ids[:, :8], use_cache=True)
        assert not graph_decode_applicable(model, ids[:, 8:], None, None, None, out.cache, None, False, False, 0)
        step = model(ids[:, 8:], cache=out.cache).logits
        full = model(ids).logits[:, -1:]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)
    assert graph_decoders(model) == {}


class _FakeIds:
    """Stands in for a CUDA tensor of token ids (the applicability test is pure logic)."""

    is_cuda = True

    def __init__(self, shape):
        self.shape = shape

    def dim(self):
        return len(self.shape)


class _FakeCache:
    def __init__(self, seen):
        self.seen_tokens = seen
        self.conv_states = [_FakeIds((1,))]


def test_graph_path_conditions():
    model = tiny_model()
    ids, cache = _FakeIds((4, 1)), _FakeCache(seen=7)
    ok = dict(input_ids=ids, inputs_embeds=None, attention_mask=None, position_ids=None, cache=cache, labels=None,
              output_hidden_states=False, output_router_stats=False, logits_to_keep=0)

    def applicable(**changes):
        return graph_decode_applicable(model, **{**ok, **changes})

    with torch.no_grad():
        assert applicable()
        assert applicable(logits_to_keep=1)
        assert not applicable(input_ids=_FakeIds((4, 2)))  # prefill chunk: eager
        assert not applicable(cache=None)
        assert not applicable(cache=_FakeCache(seen=0))  # first call of a fresh cache
        assert not applicable(attention_mask=object())
        assert not applicable(position_ids=object())
        assert not applicable(labels=object())
        assert not applicable(output_hidden_states=True)
        assert not applicable(output_router_stats=True)
        model.cuda_graph_decode = False
        assert not applicable()
        model.cuda_graph_decode = True
        model.train()
        assert not applicable()
        model.eval()
    assert not applicable()  # gradients on: eager (autograd needs the graph of ops)


def test_validate_token_ids_switch_keeps_cpu_check():
    model = tiny_model()
    assert model.model.validate_token_ids is True
    bad = torch.tensor([[1, model.config.vocab_size]])
    with pytest.raises(ValueError, match=f"token id {model.config.vocab_size} is outside the vocabulary"):
        model(bad)
    model.model.validate_token_ids = False  # only skips the CUDA check (a host sync)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(bad)


@pytest.mark.parametrize("d_in,d_out", [(16, 24), (15, 257)])
def test_sync_free_grouped_linear_paths_match_loop(d_in, d_out):
    torch.manual_seed(0)
    x, w = torch.randn(11, d_in), torch.randn(3, d_out, d_in)
    offsets = torch.tensor([3, 3, 9], dtype=torch.int32)  # an empty group and 2 dropped rows
    ref = grouped_linear(x, w, offsets)  # CPU: the per-expert loop
    assert torch.equal(ref[9:], torch.zeros_like(ref[9:]))
    torch.testing.assert_close(_all_experts_then_pick(x, w, offsets), ref, rtol=1e-5, atol=1e-5)
    try:
        padded = _grouped_mm(x, w, offsets)  # exercises the padding to multiples of 8
    except (RuntimeError, NotImplementedError) as err:  # builds without a CPU grouped GEMM
        pytest.skip(f"torch._grouped_mm unavailable on CPU here: {err}")
    assert padded.shape == ref.shape
    torch.testing.assert_close(padded, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- GPU
def _eager_and_graph(model, prompt, steps, autocast):
    """Greedy decode of ``steps`` tokens after ``prompt``, eagerly, then through the graph fed
    the eager run's tokens (teacher-forced: a last-bit difference in one step's logits cannot
    flip an argmax and send the two runs down different sequences)."""
    results, tokens = [], None
    for use_graph in (False, True):
        model.cuda_graph_decode = use_graph
        reset_graph_decoders(model)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(prompt, use_cache=True)
            cache = out.cache
            fed = [out.logits[:, -1:].argmax(-1)] if tokens is None else tokens
            logits = []
            for i in range(steps):
                step_logits = model(fed[i], cache=cache).logits
                logits.append(step_logits)
                if tokens is None:
                    fed.append(step_logits[:, -1:].argmax(-1))
            tokens = fed
        results.append((torch.cat(logits, 1), cache))
        if use_graph:
            assert graph_decoders(model), "the captured path was not taken"
    model.cuda_graph_decode = True
    return results


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("autocast", [False, True])
def test_graph_decode_equals_eager(batch, autocast):
    model = tiny_model().cuda()
    prompt = torch.randint(0, model.config.vocab_size, (batch, 13), device="cuda")
    (eager, eager_cache), (graph, graph_cache) = _eager_and_graph(model, prompt, 6, autocast)
    # On failure, say which rows and steps differ and by how much: one row diverging from some
    # step on is a state that went astray (a flipped routing choice, or a race), not rounding.
    by_row_and_step = (graph - eager).abs().amax(-1)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5,
                               msg=lambda m: f"{m}\nlargest |graph - eager| per (row, step):\n{by_row_and_step}")
    for a, b in zip(graph_cache.ssm_states + graph_cache.conv_states, eager_cache.ssm_states + eager_cache.conv_states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert graph_cache.seen_tokens == eager_cache.seen_tokens == 13 + 6


@pytest.mark.gpu
@gpu
def test_a_graph_captured_under_autocast_replays_right_in_a_later_autocast_block():
    """The decode graph captured inside one autocast block and replayed in the next: it must not
    read the weight casts of the first block's cast cache, which are freed when it ends (here
    overwritten with NaNs before the second block)."""
    model = tiny_model().cuda()
    prompt = torch.randint(0, model.config.vocab_size, (2, 9), device="cuda")

    def decode(tokens):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            cache = model(prompt, use_cache=True).cache
            return torch.cat([model(t, cache=cache).logits for t in tokens], 1)

    tokens = [torch.randint(0, model.config.vocab_size, (2, 1), device="cuda") for _ in range(4)]
    model.cuda_graph_decode = False
    reset_graph_decoders(model)
    eager = decode(tokens)
    model.cuda_graph_decode = True
    decode(tokens[:1])  # captures the graph, in this block
    assert graph_decoders(model), "the captured path was not taken"
    junk = [torch.full((1 << 20,), float("nan"), device="cuda") for _ in range(64)]  # take the freed blocks
    graph = decode(tokens)
    del junk
    assert torch.isfinite(graph).all()
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu
@pytest.mark.slow
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_graph_decode_equals_eager(autocast):
    """``cuda_graph_compile``: the decode step compiled by torch.compile (Inductor fuses it), then
    captured. Same tokens and logits as eager decode, up to Inductor's reordered arithmetic."""
    model = tiny_model().cuda()
    model.cuda_graph_compile = True
    prompt = torch.randint(0, model.config.vocab_size, (2, 11), device="cuda")
    (eager, eager_cache), (graph, graph_cache) = _eager_and_graph(model, prompt, 5, autocast)
    tol = 2e-2 if autocast else 1e-4
    torch.testing.assert_close(graph, eager, rtol=tol, atol=tol)
    for a, b in zip(graph_cache.ssm_states + graph_cache.conv_states, eager_cache.ssm_states + eager_cache.conv_states):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.gpu
@gpu
def test_graph_decode_state_update_all():
    model = tiny_model(state_update="all").cuda()
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), device="cuda")
    (eager, _), (graph, _) = _eager_and_graph(model, prompt, 4, False)
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@gpu
def test_generate_with_graphs_equals_eager_generate():
    model = tiny_model().cuda()
    prompt = torch.randint(0, model.config.vocab_size, (2, 11), device="cuda")
    outs = []
    for use_graph in (False, True):
        model.cuda_graph_decode = use_graph
        reset_graph_decoders(model)
        outs.append(model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0))
    assert torch.equal(outs[0], outs[1])
    assert graph_decoders(model)


@pytest.mark.gpu
@gpu
def test_two_interleaved_caches_stay_apart():
    model = tiny_model().cuda()
    V = model.config.vocab_size
    p1, p2 = (torch.randint(0, V, (1, 9), device="cuda") for _ in range(2))
    tokens = torch.randint(0, V, (1, 5), device="cuda")

    def run(prompt, graph):
        model.cuda_graph_decode = graph
        with torch.no_grad():
            cache = model(prompt, use_cache=True).cache
        return cache

    with torch.no_grad():
        reset_graph_decoders(model)
        c1, c2 = run(p1, True), run(p2, True)
        interleaved = {1: [], 2: []}
        for t in range(5):  # alternate: every step rebinds the static tensors
            interleaved[1].append(model(tokens[:, t : t + 1], cache=c1).logits)
            interleaved[2].append(model(tokens[:, t : t + 1], cache=c2).logits)
        for prompt, key in ((p1, 1), (p2, 2)):
            cache = run(prompt, False)
            alone = [model(tokens[:, t : t + 1], cache=cache).logits for t in range(5)]
            torch.testing.assert_close(torch.cat(interleaved[key], 1), torch.cat(alone, 1), rtol=1e-5, atol=1e-5)
    model.cuda_graph_decode = True


@pytest.mark.gpu
@gpu
def test_weights_moved_recaptures():
    model = tiny_model().cuda()
    prompt = torch.randint(0, model.config.vocab_size, (1, 5), device="cuda")
    with torch.no_grad():
        cache = model(prompt, use_cache=True).cache
        model(prompt[:, :1], cache=cache)
        first = next(iter(graph_decoders(model).values()))
        model.to(torch.float64).to(torch.float32)  # every parameter gets new storage
        cache = model(prompt, use_cache=True).cache
        got = model(prompt[:, :1], cache=cache).logits
        model.cuda_graph_decode = False
        cache = model(prompt, use_cache=True).cache
        want = model(prompt[:, :1], cache=cache).logits
    assert next(iter(graph_decoders(model).values())) is not first
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _no_sync(fn):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_training_step_makes_no_host_sync(state_update):
    """Forward + backward under bf16 autocast (what the trainer runs) without .item(),
    nonzero, .tolist() or data-dependent shapes: needed for torch.compile and CUDA graphs."""
    torch.manual_seed(0)
    cfg = MossNetConfig.from_preset("tiny", n_layers=2, d_model=128, state_update=state_update)
    model = MossNetForCausalLM(cfg).cuda().train()
    model.model.validate_token_ids = False  # the trainer's data pipeline validates ids
    ids = torch.randint(0, cfg.vocab_size, (2, 96), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask, labels=ids, output_router_stats=True)
        out.loss.backward()
        return out.loss

    step()  # warm-up: Triton autotuning and lazy initialisation may sync
    model.zero_grad(set_to_none=True)
    loss = _no_sync(step)
    assert torch.isfinite(loss).item()


@pytest.mark.gpu
@gpu
def test_prefill_and_eager_decode_make_no_host_sync():
    model = tiny_model().cuda()
    model.model.validate_token_ids = False
    model.cuda_graph_decode = False
    ids = torch.randint(0, model.config.vocab_size, (2, 40), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        cache = model(ids, use_cache=True).cache  # warm-up
        cache = _no_sync(lambda: model(ids, use_cache=True).cache)
        logits = _no_sync(lambda: model(ids[:, :1], cache=cache).logits)
    assert logits.shape == (2, 1, model.config.vocab_size)
