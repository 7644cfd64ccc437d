"""Generation with the recurrent cache (spec section 6): greedy = argmax of full forwards,
sampling, streamers, stopping criteria, constant cache size, left-padded batches, chunked
prefill, beam search."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList, TextStreamer

from mossnet import MossNetCache

MODES = ["routed", "all"]


def word_tokenizer(vocab_size=64):
    """An offline tokenizer whose token i is the word ``w{i}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def greedy_by_full_forwards(model, ids, n):
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("state_update", MODES)
def test_greedy_equals_argmax_of_full_forwards(make_model, state_update):
    model = make_model(state_update=state_update)
    ids = torch.randint(0, 64, (2, 7))
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    want = greedy_by_full_forwards(model, ids, 10)
    assert torch.equal(out, want)
    assert len(set(out[:, 7:].flatten().tolist())) > 2, "degenerate test: the model repeats one token"


@pytest.mark.parametrize("state_update", MODES)
def test_chunked_prefill_then_decode_equals_one_forward(make_model, state_update):
    """Teacher-forced: prefill in chunks, then one token at a time through the cache (the
    recurrent step, and the masked full path with T = 1), equals one full forward."""
    model = make_model(state_update=state_update)
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :5], use_cache=True)
        cache = first.cache
        assert isinstance(cache, MossNetCache) and cache.seen_tokens == 5
        logits = [first.logits, model(ids[:, 5:11], cache=cache).logits]
        for t in range(11, 16):
            if t % 2:  # the recurrent step
                logits.append(model(ids[:, t : t + 1], cache=cache).logits)
            else:  # the sequence path with a cache and T = 1
                logits.append(model(ids[:, t : t + 1], attention_mask=torch.ones(2, 1), cache=cache).logits)
        assert cache.seen_tokens == 16
    got = torch.cat(logits, dim=1)
    assert float((got - full).abs().max() / full.abs().max()) < 1e-5


@pytest.mark.parametrize("state_update", MODES)
def test_left_padded_batch_equals_each_prompt_alone(make_model, state_update):
    """Spec section 2.8: padding enters no conv, no scan: a left-padded batch generates exactly
    what each prompt generates alone."""
    model = make_model(state_update=state_update)
    prompts = [torch.randint(1, 64, (n,)) for n in (3, 8, 5)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p) :] = p
        mask[r, T - len(p) :] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for r, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(out[r, T:], alone[0, len(p) :]), r


def test_sampling_is_reproducible(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 5))
    kw = dict(do_sample=True, top_k=8, top_p=0.9, temperature=0.8, max_new_tokens=12)
    torch.manual_seed(7)
    a = model.generate(ids, **kw)
    torch.manual_seed(7)
    b = model.generate(ids, **kw)
    torch.manual_seed(8)
    c = model.generate(ids, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (2, 17)
    # top_k = 1 sampling is greedy.
    torch.manual_seed(0)
    greedy_sampled = model.generate(ids, do_sample=True, top_k=1, max_new_tokens=6)
    assert torch.equal(greedy_sampled, model.generate(ids, do_sample=False, max_new_tokens=6))


def test_sampled_tokens_come_from_the_top_k(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (1, 4))
    torch.manual_seed(3)
    out = model.generate(ids, do_sample=True, top_k=3, max_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    for step, logits in enumerate(out.logits):
        allowed = logits[0].topk(3).indices.tolist()
        assert int(out.sequences[0, 4 + step]) in allowed


@pytest.mark.parametrize("n", [1, 5, 17])
def test_max_new_tokens(make_model, n):
    model = make_model()
    out = model.generate(torch.randint(0, 64, (2, 3)), max_new_tokens=n, do_sample=False)
    assert out.shape == (2, 3 + n)


def test_text_streamer(make_model, capsys):
    model = make_model()
    tok = word_tokenizer()
    ids = tok("w3 w14 w15 w9", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False, streamer=TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out[0, 4:]).strip()
    assert len(printed.split()) == 6


def test_stopping_criteria_and_eos(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (1, 4))

    class StopAfter(StoppingCriteria):
        def __init__(self, n):
            self.n, self.calls = n, 0

        def __call__(self, input_ids, scores, **kwargs):
            self.calls += 1
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 4 + self.n, dtype=torch.bool)

    crit = StopAfter(3)
    out = model.generate(ids, max_new_tokens=20, do_sample=False, stopping_criteria=StoppingCriteriaList([crit]))
    assert out.shape == (1, 7) and crit.calls == 3
    # An eos token stops generation where it is produced.
    free = model.generate(ids, max_new_tokens=10, do_sample=False)
    eos = int(free[0, 4 + 4])
    first = (free[0, 4:] == eos).nonzero()[0].item()
    out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out[0], free[0, : 4 + first + 1])


def test_cache_size_does_not_grow(make_model):
    """O(1) memory in the generated length: one cache, the same tensors, the same bytes."""
    model = make_model()
    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get("cache")
        if cache is not None:
            seen.append((id(cache), cache.nbytes(), [t.data_ptr() for t in cache.ssm_states + cache.conv_states]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model.generate(torch.randint(0, 64, (2, 6)), max_new_tokens=30, do_sample=False)
    finally:
        handle.remove()
    assert len(seen) >= 29
    assert len({s[0] for s in seen}) == 1 and len({s[1] for s in seen}) == 1
    assert all(s[2] == seen[0][2] for s in seen), "cache tensors were reallocated"
    cache = MossNetCache(model.config, batch_size=2)
    assert seen[0][1] == cache.nbytes()
    # Manual decoding: the bytes stay the same however many tokens are generated.
    with torch.no_grad():
        out = model(torch.randint(0, 64, (2, 6)), use_cache=True)
        nbytes = out.cache.nbytes()
        for _ in range(40):
            out = model(out.logits[:, -1:].argmax(-1), cache=out.cache)
        assert out.cache.nbytes() == nbytes and out.cache.seen_tokens == 46


@pytest.mark.parametrize("state_update", MODES)
def test_beam_search_reorders_the_cache(make_model, state_update):
    """Beam search works: with the cache (reordered along with the beams) it returns the same
    beams and scores as without it (every step a full forward), and the scores rank the beams by
    their log-probability under full forwards. (How transformers length-normalises
    ``sequences_scores`` changed between 5.17 and 5.24, so the scores are compared to the
    no-cache run, not to a formula.)"""
    model = make_model(state_update=state_update)
    ids = torch.randint(0, 64, (2, 6))
    n = 5
    kw = dict(max_new_tokens=n, num_beams=3, num_return_sequences=2, do_sample=False,
              return_dict_in_generate=True, output_scores=True, length_penalty=1.0, early_stopping=True)
    out = model.generate(ids, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    seqs = out.sequences
    assert seqs.shape == (4, 6 + n)
    assert torch.equal(seqs, uncached.sequences)
    torch.testing.assert_close(out.sequences_scores, uncached.sequences_scores, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        logp = model(seqs, use_cache=False).logits.log_softmax(-1)
    lp = logp[:, 5:-1].gather(-1, seqs[:, 6:, None]).squeeze(-1).sum(-1)
    assert (lp.view(2, 2)[:, 0] >= lp.view(2, 2)[:, 1] - 1e-4).all()  # best beam first
    # The best beam is at least as likely as the greedy continuation.
    greedy = model.generate(ids, max_new_tokens=n, do_sample=False)
    with torch.no_grad():
        glogp = model(greedy, use_cache=False).logits.log_softmax(-1)
    glp = glogp[:, 5:-1].gather(-1, greedy[:, 6:, None]).squeeze(-1).sum(-1)
    assert (lp.view(2, 2)[:, 0] >= glp - 1e-4).all()


@pytest.mark.parametrize("state_update", MODES)
def test_decode_after_packed_prefill_continues_the_last_document(make_model, state_update):
    """A packed prefill leaves each row's cache at the end of its *last* document: decoding
    then equals decoding after that document alone (earlier documents do not leak into the
    conv window or the SSM state)."""
    model = make_model(state_update=state_update)
    ids = torch.randint(0, 64, (2, 10))
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3], [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]])
    last_start = [6, 5]
    nxt = torch.randint(0, 64, (2, 4))
    with torch.no_grad():
        out = model(ids, position_ids=position_ids, use_cache=True)
        got = [model(nxt[:, t : t + 1], cache=out.cache).logits for t in range(4)]
        got = torch.cat(got, 1)
        for r in range(2):
            alone = model(torch.cat([ids[r : r + 1, last_start[r] :], nxt[r : r + 1]], 1), use_cache=False).logits
            torch.testing.assert_close(got[r], alone[0, -4:], rtol=1e-5, atol=1e-5)


def test_plain_position_ids_change_nothing(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (2, 9))
    a = model(ids).logits
    b = model(ids, position_ids=torch.arange(9)[None].expand(2, 9)).logits
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
