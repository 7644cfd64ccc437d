"""CUDA-graph prefill (``cuda_graph_prefill.py``).

CPU: the buckets, the slot's adopt, when the captured path applies, and the invariant it rests
on: a prompt padded on the right to its bucket, with the padding masked, leaves the same states
and last-position logits as the prompt alone (fresh and continued, routed and dense). Then the
whole path with an eager stand-in for the capture (everything but the capture itself). GPU
(marked ``gpu``): the captured prefill equals the eager one, is captured the second time a
bucket is met, continues a cache, and hands each prompt its own cache.
"""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.models.mossnet.cache import MossNetCache
from mossnet.models.mossnet.cuda_graph_decode import StaticCacheSlot
from mossnet.models.mossnet.cuda_graph_prefill import (
    SMALLEST_BUCKET,
    bucket_length,
    graph_prefill_applicable,
    graph_prefills,
    largest_bucket,
    reset_graph_prefills,
)

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def tiny_model(**overrides) -> MossNetForCausalLM:
    torch.manual_seed(0)
    cfg = MossNetConfig.from_preset("tiny", n_layers=2, **overrides)
    return MossNetForCausalLM(cfg).eval()


def _states(cache):
    return cache.conv_states + cache.ssm_states


# ---------------------------------------------------------------------------- CPU: logic
def test_buckets():
    assert [bucket_length(t, 2048) for t in (1, 31, 32, 33, 64, 65, 1025, 2048)] == [32, 32, 32, 64, 64, 128, 2048, 2048]
    assert bucket_length(1100, 1536) == 1536  # a largest bucket that is no power of two caps the rest
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        bucket_length(2049, 2048)
    assert largest_bucket(MossNetConfig.from_preset("tiny", prefill_block_size=512)) == 512
    assert largest_bucket(MossNetConfig.from_preset("tiny", prefill_block_size=0)) == 2048


def test_slot_adopt_points_without_copying_and_frees_the_previous_cache():
    config = MossNetConfig.from_preset("tiny", n_layers=2)
    slot = StaticCacheSlot(config, batch_size=1)
    first = MossNetCache.from_states([], [])
    slot.adopt(first)  # an empty cache gets the static tensors
    assert slot.is_bound(first) and len(first.ssm_states) == 2
    slot.static_cache.ssm_states[0].fill_(3.0)  # a replay writes the states
    second = MossNetCache(config, 1)
    second.ssm_states[0].fill_(7.0)
    slot.adopt(second)  # nothing copied in; the first cache keeps what the replay left it
    assert slot.is_bound(second) and not slot.is_bound(first)
    assert torch.equal(first.ssm_states[0], torch.full_like(first.ssm_states[0], 3.0))
    assert second.ssm_states[0] is slot.static_cache.ssm_states[0]
    slot.static_cache.ssm_states[0].zero_()
    assert first.ssm_states[0].eq(3.0).all()


def test_applicability():
    model = tiny_model()
    policy = model.execution_policy.replace(prefill_graph=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    base = dict(input_ids=ids, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=True, labels=None, output_hidden_states=False, output_router_stats=False,
                logits_to_keep=1, policy=policy)

    def applies(**changes):
        with torch.no_grad():
            return graph_prefill_applicable(model, **{**base, **changes})

    assert not applies()  # CPU tensors
    if CUDA:
        model.cuda()
        cuda_ids = ids.cuda()
        base["input_ids"] = cuda_ids
        assert applies()
        assert not applies(policy=policy.replace(prefill_graph=False))
        assert not applies(logits_to_keep=0)
        assert not applies(input_ids=cuda_ids[:, :1])
        assert applies(input_ids=torch.zeros(1, 4096, dtype=torch.long, device="cuda"))  # in blocks
        assert not applies(input_ids=torch.zeros(16, 4096, dtype=torch.long, device="cuda"))  # GPU-bound: eager
        assert not applies(position_ids=torch.arange(40, device="cuda")[None])
        assert not applies(use_cache=False)
        assert not applies(labels=cuda_ids)
        assert not applies(output_router_stats=True)
        with torch.enable_grad():
            assert not graph_prefill_applicable(model, **base)


@pytest.mark.parametrize("overrides", [{}, {"state_update": "all"}, {"ssm_conv_placement": "shared"}])
@pytest.mark.parametrize("continued", [False, True])
@pytest.mark.parametrize("T", [1, 23, 32])
def test_right_padding_to_the_bucket_changes_nothing(overrides, continued, T):
    """What the captured prefill computes, run eagerly on the CPU: the prompt padded to its
    bucket with the padding masked leaves the states and the last position's logits of the
    prompt alone."""
    model = tiny_model(**overrides)
    V, bucket = model.config.vocab_size, bucket_length(T, 2048)
    torch.manual_seed(1)
    ids = torch.randint(0, V, (2, T))
    start = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        def fresh_or_continued():
            return model(start, use_cache=True).cache if continued else None

        want = model(ids, cache=fresh_or_continued(), use_cache=True, logits_to_keep=1)
        padded = torch.zeros(2, bucket, dtype=torch.long)
        padded[:, :T] = ids
        mask = torch.zeros(2, bucket, dtype=torch.long)
        mask[:, :T] = 1
        got = model(padded, attention_mask=mask, cache=fresh_or_continued(), use_cache=True)
    torch.testing.assert_close(got.logits[:, T - 1], want.logits[:, -1], rtol=1e-5, atol=1e-5)
    for a, b in zip(_states(got.cache), _states(want.cache)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------- CPU: the whole path, with a stand-in graph
class _EagerGraph:
    """A CUDA graph's contract, run eagerly: ``replay`` runs the captured function again on the
    same static buffers and writes its result into the static output."""

    def __init__(self, fn):
        # A real graph keeps what its kernels need and the prefill drops its model after capture;
        # the stand-in re-runs Python, so it keeps the model and lends it back for each replay.
        self.fn, self.owner = fn, fn.__self__
        self.model = self.owner.model
        self.out = fn()

    def replay(self):
        self.owner.model = self.model
        try:
            self.out.copy_(self.fn())
        finally:
            self.owner.model = None


@pytest.fixture
def eager_graphs(monkeypatch):
    """``cuda_graph_prefill`` with every capture replaced by :class:`_EagerGraph` (CPU), so that
    everything but the capture itself runs: the static buffers, the bucket's mask and last
    position, the cache slots, the registry and the second-sighting rule."""
    from mossnet.models.mossnet import cuda_graph_prefill

    def eager_capture(fn, warmup=0, pool=None):
        for _ in range(warmup):
            fn()
        graph = _EagerGraph(fn)
        return graph, graph.out

    monkeypatch.setattr(cuda_graph_prefill, "capture", eager_capture)
    return cuda_graph_prefill.graph_prefill


def _eager(model, ids, cache=None, mask=None):
    with torch.no_grad():
        out = model(ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits, out.cache


@pytest.mark.parametrize("overrides", [{}, {"state_update": "all"}])
def test_stand_in_graph_prefill_equals_eager(eager_graphs, overrides):
    model = tiny_model(**overrides)
    policy = model.execution_policy.replace(prefill_graph=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 37))
    want, want_cache = _eager(model, ids)
    with torch.no_grad():
        assert eager_graphs(model, ids, None, None, policy) is None  # first of its bucket: the caller runs eager
        assert not graph_prefills(model)
        first, first_cache = eager_graphs(model, ids, None, None, policy)
        assert [key[:3] for key in graph_prefills(model)] == [(2, 64, False)]
        second, second_cache = eager_graphs(model, ids, None, MossNetCache(model.config, 2), policy)
    for logits, cache in ((first, first_cache), (second, second_cache)):
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(_states(cache), _states(want_cache)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert cache.seen_tokens == 37
    # the second prompt took the static tensors; the first kept private copies of its states
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(_states(first_cache), _states(second_cache)))
    reset_graph_prefills(model)
    assert not graph_prefills(model)


def test_stand_in_graph_prefill_continues_left_padded_rows_and_decodes_on(eager_graphs):
    model = tiny_model()
    V = model.config.vocab_size
    policy = model.execution_policy.replace(prefill_graph=True)
    first, second = torch.randint(0, V, (2, 20)), torch.randint(0, V, (2, 11))
    mask = torch.ones_like(first)
    mask[0, :5] = 0  # row 0 left-padded
    token = torch.randint(0, V, (2, 1))

    def run(prefill):
        _, cache = prefill(first, None, mask)
        logits, cache = prefill(second, cache, None)
        with torch.no_grad():
            step = model(token, cache=cache).logits
        return logits, step, cache

    want = run(lambda ids, cache, m: _eager(model, ids, cache, m))

    def graphed(ids, cache, m):
        with torch.no_grad():
            return eager_graphs(model, ids, m, cache, policy) or _eager(model, ids, cache, m)

    run(graphed)  # meets both keys once: eager
    got = run(graphed)
    assert {key[2] for key in graph_prefills(model)} == {False, True}  # fresh and continued
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got[2].seen_tokens == want[2].seen_tokens == 32


def test_stand_in_graph_prefill_runs_a_long_prompt_in_blocks(eager_graphs):
    model = tiny_model(prefill_block_size=32)
    policy = model.execution_policy.replace(prefill_graph=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 100))  # blocks of 32, 32, 32 and 4
    want, want_cache = _eager(model, ids)
    with torch.no_grad():
        first = eager_graphs(model, ids, None, None, policy)  # later blocks already replay
        got, got_cache = eager_graphs(model, ids, None, None, policy)
    assert {key[1:3] for key in graph_prefills(model)} == {(32, False), (32, True)}
    for logits, cache in (first, (got, got_cache)):
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(_states(cache), _states(want_cache)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert cache.seen_tokens == 100


# ---------------------------------------------------------------------------- GPU: the graph
def _switch(model, on: bool) -> None:
    model.execution_policy = model.execution_policy.replace(prefill_graph=on)


def _prefill(model, ids, cache=None, mask=None):
    with torch.no_grad():
        out = model(ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits, out.cache


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("overrides", [{}, {"state_update": "all"}])
def test_graph_prefill_equals_eager(autocast, overrides):
    model = tiny_model(**overrides).cuda()
    V = model.config.vocab_size
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-4, atol=1e-4)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else torch.no_grad
    for T in (5, 37, 64):
        ids = torch.randint(0, V, (2, T), device="cuda")
        _switch(model, False)
        with ctx():
            want, want_cache = _prefill(model, ids)
        _switch(model, True)
        reset_graph_prefills(model)
        with ctx():
            _prefill(model, ids)  # first of its bucket: eager
            assert not graph_prefills(model)
            got, got_cache = _prefill(model, ids)  # second: captured
            assert len(graph_prefills(model)) == 1
            again, again_cache = _prefill(model, ids)  # replayed
        for logits, cache in ((got, got_cache), (again, again_cache)):
            torch.testing.assert_close(logits, want, **tol)
            for a, b in zip(_states(cache), _states(want_cache)):
                torch.testing.assert_close(a, b, **tol)
            assert cache.seen_tokens == T
        # each prompt keeps its own cache: the replay that filled ``again`` did not touch ``got``'s
        for a, b in zip(_states(got_cache), _states(again_cache)):
            assert a.data_ptr() != b.data_ptr()
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@gpu
def test_graph_prefill_continues_a_cache_and_decodes_on():
    model = tiny_model().cuda()
    V = model.config.vocab_size
    first = torch.randint(0, V, (1, 20), device="cuda")
    second = torch.randint(0, V, (1, 11), device="cuda")
    token = torch.randint(0, V, (1, 1), device="cuda")

    def run():
        _, cache = _prefill(model, first)
        logits, cache = _prefill(model, second, cache=cache)
        with torch.no_grad():
            step = model(token, cache=cache).logits
        return logits, step, cache

    _switch(model, False)
    want = run()
    _switch(model, True)
    reset_graph_prefills(model)
    run()
    got = run()
    assert {key[2] for key in graph_prefills(model)} == {False, True}  # fresh and continued captured
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)
    assert got[2].seen_tokens == want[2].seen_tokens == 32


@pytest.mark.gpu
@gpu
def test_graph_prefill_with_left_padding_mask_and_generate():
    model = tiny_model().cuda()
    V = model.config.vocab_size
    ids = torch.randint(1, V, (2, 12), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0 left-padded
    outs = []
    for graph in (False, True, True, True):
        _switch(model, graph)
        outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0))
    assert graph_prefills(model)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.gpu
@gpu
def test_a_prompt_longer_than_the_largest_bucket_runs_in_captured_blocks():
    model = tiny_model(prefill_block_size=32).cuda()
    ids = torch.randint(0, model.config.vocab_size, (2, 100), device="cuda")  # blocks of 32, 32, 32, 4
    _switch(model, False)
    want, want_cache = _prefill(model, ids)
    _switch(model, True)
    reset_graph_prefills(model)
    _prefill(model, ids)
    got, got_cache = _prefill(model, ids)
    assert {(key[1], key[2]) for key in graph_prefills(model)} == {(32, False), (32, True)}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(_states(got_cache), _states(want_cache)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert got_cache.seen_tokens == 100
