"""The lm-eval adapter scores exactly what a direct computation with the model gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from mossnet.eval.lm_eval_adapter import MossNetLM, cut_at_stop  # noqa: E402

from .conftest import make_mossnet  # noqa: E402

PAIRS = [  # (context, continuation): different lengths, so batches are padded
    ("Question: Which statement best explains photosynthesis?\nAnswer:", " Sunlight is the source of energy."),
    ("A man is sitting on a roof. He", " starts pulling up roofing."),
    ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
    ("In my palm is a clear stone ", "angel"),  # trailing space moves to the continuation
]


def _requests(request_type, args_list):
    return [Instance(request_type=request_type, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def direct_loglikelihood(model, tokenizer, context, continuation):
    """Reference: one unpadded forward pass over context + continuation."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = tokenizer.encode(stripped)
    whole = tokenizer.encode(stripped + continuation)
    n = len(whole) - len(context_ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0, :-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)[-n:]
    targets = torch.tensor(whole[-n:])
    total = log_probs.gather(-1, targets[:, None]).sum().item()
    return total, bool((log_probs.argmax(-1) == targets).all())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_equals_direct_computation(tiny_llama, tiny_tokenizer, batch_size):
    lm = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, batch_size=batch_size, device="cpu")
    got = lm.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        want, want_greedy = direct_loglikelihood(tiny_llama, tiny_tokenizer, context, continuation)
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy


def test_loglikelihood_equals_lm_eval_hf_backend(tiny_llama, tiny_tokenizer):
    pytest.importorskip("accelerate")  # lm-eval's hf backend imports it
    from lm_eval.models.huggingface import HFLM

    ours = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, batch_size=2, device="cpu")
    theirs = HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, batch_size=2, device="cpu")
    requests = _requests("loglikelihood", PAIRS)
    for (a, greedy_a), (b, greedy_b) in zip(
        ours.loglikelihood(requests, disable_tqdm=True), theirs.loglikelihood(requests, disable_tqdm=True)
    ):
        assert a == pytest.approx(b, abs=1e-4)
        assert greedy_a == greedy_b


def test_rolling_loglikelihood_short_text_equals_direct(tiny_llama, tiny_tokenizer):
    text = "A man is sitting on a roof. He starts pulling up roofing on a roof."
    lm = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, device="cpu")
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = tiny_llama(input_ids=torch.tensor([ids])).logits[0, :-1]
    want = F.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
    assert got == pytest.approx(want, abs=1e-4)


def test_rolling_loglikelihood_long_text_equals_hf_backend(tiny_llama, tiny_tokenizer):
    """Texts longer than max_length are cut into windows the same way lm-eval's hf backend does."""
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM

    texts = [("Sarah was a much better surgeon than Maria so Maria always got the harder cases. " * 3,)]
    ours = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, max_length=16, device="cpu")
    theirs = HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, max_length=16, device="cpu")
    requests = _requests("loglikelihood_rolling", texts)
    (a,) = ours.loglikelihood_rolling(requests, disable_tqdm=True)
    (b,) = theirs.loglikelihood_rolling(requests, disable_tqdm=True)
    assert a == pytest.approx(b, abs=1e-3)


def test_generate_until_is_greedy_generate_cut_at_stop(tiny_llama, tiny_tokenizer):
    prompts = ["Question: Which statement", "A man is sitting on a roof. He starts"]
    settings = {"until": ["roof"], "max_gen_toks": 12}
    lm = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, batch_size=2, device="cpu")
    got = lm.generate_until(_requests("generate_until", [(p, settings) for p in prompts]), disable_tqdm=True)
    for prompt, text in zip(prompts, got):
        ids = torch.tensor([tiny_tokenizer.encode(prompt)])
        with torch.no_grad():
            out = tiny_llama.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        want = cut_at_stop(tiny_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ["roof"])
        assert text == want
        assert "roof" not in text


def test_cut_at_stop():
    assert cut_at_stop("abc\n\ndef", ["\n\n", "c"]) == "ab"
    assert cut_at_stop("abc", []) == "abc"


def test_registered_names_keep_lm_eval_backends():
    from lm_eval.api.registry import get_model

    assert get_model("mossnet") is MossNetLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours must not hide lm-eval's own


def test_mossnet_model_loglikelihood_equals_direct(tiny_tokenizer):
    model = make_mossnet(len(tiny_tokenizer))
    lm = MossNetLM(model, tokenizer=tiny_tokenizer, batch_size=3, device="cpu")
    got = lm.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(PAIRS, got):
        want, _ = direct_loglikelihood(model, tiny_tokenizer, context, continuation)
        assert logprob == pytest.approx(want, abs=1e-4)
    (text,) = lm.generate_until(
        _requests("generate_until", [("A man is", {"until": ["\n"], "max_gen_toks": 5})]), disable_tqdm=True
    )
    assert isinstance(text, str)
