"""Prompts of any length at flat memory: ``generate`` keeps the logits of the last position
only (``logits_to_keep``), and a prompt longer than ``config.prefill_block_size`` is prefilled
in blocks through the cache, with the one-pass result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mossnet import MossNetConfig

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_long_prompt.py"
MODES = ["routed", "all"]


def with_block(model, block: int):
    model.config.prefill_block_size = block
    return model


def last_logits_and_greedy(model, ids, mask=None, n_new=8):
    """Logits at the prompt's last position, then at every greedy step, and the greedy tokens."""
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, pad_token_id=0,
                         return_dict_in_generate=True, output_logits=True)
    return torch.stack(out.logits, 1), out.sequences[:, ids.shape[1]:]


@pytest.mark.parametrize("state_update", MODES)
@pytest.mark.parametrize("T,block", [(23, 7), (50, 16), (9, 8)])
def test_block_prefill_equals_one_pass(make_model, state_update, T, block):
    """Odd lengths, a last block of one token included (9 = 8 + 1): the logits of the prompt's
    last position and of every greedy step after it agree to fp32 rounding, and the greedy
    continuation is the same."""
    model = make_model(state_update=state_update)
    ids = torch.randint(0, 64, (2, T))
    want_logits, want_tokens = last_logits_and_greedy(with_block(model, 0), ids)
    got_logits, got_tokens = last_logits_and_greedy(with_block(model, block), ids)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_tokens, want_tokens)


@pytest.mark.parametrize("state_update", MODES)
def test_block_prefill_of_a_left_padded_batch(make_model, state_update):
    """The padding mask is cut into the same blocks: a left-padded batch whose padding spans a
    whole block gives the one-pass result."""
    model = make_model(state_update=state_update)
    ids = torch.randint(1, 64, (2, 21))
    mask = torch.ones(2, 21, dtype=torch.long)
    mask[1, :12] = 0  # row 1: two padding-only blocks of 5, then part of a third
    want_logits, want_tokens = last_logits_and_greedy(with_block(model, 0), ids, mask)
    got_logits, got_tokens = last_logits_and_greedy(with_block(model, 5), ids, mask)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_tokens, want_tokens)


@pytest.mark.parametrize("keep", [0, 3, 12, 40])
def test_block_prefill_keeps_the_asked_logits(make_model, keep):
    """logits_to_keep larger than a block (12 > 5), than the prompt (40 > 23) and 0 (all):
    the same positions and values as the one-pass forward, and the same cache."""
    model = make_model()
    ids = torch.randint(0, 64, (1, 23))
    with torch.no_grad():
        want = with_block(model, 0)(ids, use_cache=True, logits_to_keep=keep)
        got = with_block(model, 5)(ids, use_cache=True, logits_to_keep=keep)
    assert got.logits.shape == want.logits.shape
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(got.cache.ssm_states + got.cache.conv_states, want.cache.ssm_states + want.cache.conv_states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got.cache.seen_tokens == want.cache.seen_tokens == 23


def test_block_prefill_from_inputs_embeds(make_model):
    model = make_model()
    ids = torch.randint(0, 64, (1, 19))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        want = with_block(model, 0)(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits
        got = with_block(model, 4)(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_generate_prefills_in_blocks_and_keeps_one_position(make_model):
    """Through ``generate``: the backbone runs once per block, then once per new token, and the
    LM head never sees more than one position (``logits_to_keep=1`` reaches the forward)."""
    model = with_block(make_model(), 6)
    backbone_lengths, head_lengths = [], []
    model.model.register_forward_pre_hook(
        lambda m, args, kwargs: backbone_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    model.lm_head.register_forward_pre_hook(lambda m, args: head_lengths.append(args[0].shape[1]))
    model.generate(torch.randint(0, 64, (1, 20)), max_new_tokens=3, do_sample=False)
    assert backbone_lengths == [6, 6, 6, 2, 1, 1]
    assert head_lengths == [1, 1, 1]


def test_training_and_scoring_stay_one_pass(make_model):
    """Labels, gradients, hidden states or router statistics need every position: one pass."""
    model = with_block(make_model(), 4)
    ids = torch.randint(0, 64, (1, 13))
    calls = []
    model.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    with torch.no_grad():
        model(ids, labels=ids, use_cache=True)
        model(ids, use_cache=True, output_router_stats=True)
        model(ids, use_cache=True, output_hidden_states=True)
    model(ids, use_cache=True)  # gradients on
    assert len(calls) == 4


def test_prefill_block_size_is_validated():
    assert MossNetConfig(prefill_block_size=0).prefill_block_size == 0
    assert MossNetConfig().prefill_block_size == 2048
    for bad in (-1, 2.5, True, "2048"):
        with pytest.raises(ValueError, match="prefill_block_size"):
            MossNetConfig(prefill_block_size=bad)


def _peak_rss_mb(length: int) -> subprocess.Popen:
    cmd = [sys.executable, str(BENCH), "--worker", "--preset", "tiny", "--length", str(length), "--new-tokens", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_peak_memory_of_a_40k_prompt_is_that_of_a_2k_prompt():
    """``tiny`` with random weights, each length in its own process (run side by side): the
    peak resident memory of ``generate`` after a 40,960-token prompt is within 10% of that after
    a 2,048-token prompt. (Before blocks and ``logits_to_keep`` it was 2.4x.)"""
    workers = {length: _peak_rss_mb(length) for length in (2048, 40960)}
    rows = {}
    for length, proc in workers.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        rows[length] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    short, long = rows[2048]["peak_rss_mb"], rows[40960]["peak_rss_mb"]
    assert long <= 1.10 * short, f"peak RSS {long:.0f} MB at 40,960 tokens vs {short:.0f} MB at 2,048"
