"""``generate`` options a recurrent cache cannot honour are refused before any work, with one
line naming the option and why; ``cache_implementation="static"`` is what MossNet's cache
already is, and works."""

from __future__ import annotations

import pytest
import torch

from mossnet.errors import OptionError
from mossnet.models.mossnet.generation import UnsupportedGenerationError


def refuses(model, match, **kwargs) -> str:
    calls = []
    model.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    with pytest.raises(UnsupportedGenerationError, match=match) as info:
        model.generate(torch.randint(0, 64, (1, 12)), max_new_tokens=4, do_sample=False, **kwargs)
    assert not calls, "the option must be refused before the prompt is run"
    message = str(info.value)
    assert "\n" not in message and "MossNet does not support" in message
    return message


def test_prompt_lookup_is_refused_with_the_reason(make_model):
    message = refuses(make_model(), "prompt_lookup_num_tokens=3", prompt_lookup_num_tokens=3)
    assert "roll" in message  # why: rejected drafts need the cache rolled back


def test_assisted_decoding_is_refused(make_model):
    refuses(make_model(), "assisted decoding", assistant_model=make_model(seed=1))


@pytest.mark.parametrize("kind", ["dynamic", "offloaded", "quantized"])
def test_key_value_cache_kinds_are_refused(make_model, kind):
    refuses(make_model(), f"cache_implementation='{kind}'", cache_implementation=kind)


def test_the_error_is_an_option_error_and_a_value_error():
    assert issubclass(UnsupportedGenerationError, OptionError)
    assert issubclass(UnsupportedGenerationError, ValueError)


def test_static_cache_is_the_mossnet_cache(make_model, capfd):
    """A static cache request generates what the default does, through the same fixed-size
    MossNetCache, without a warning that it was ignored."""
    model = make_model()
    ids = torch.randint(0, 64, (2, 9))
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    capfd.readouterr()
    got = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(got, want)
    assert "ignored" not in capfd.readouterr().err  # transformers' logger writes to stderr
