"""How MossNet plugs into transformers' ``generate``: :class:`MossNetGenerationMixin`, and which
of ``generate``'s options a recurrent model can honour, checked before any work.

MossNet's cache (:class:`~mossnet.models.mossnet.cache.MossNetCache`) is one fixed-size state
per layer, allocated once and updated in place: it is already what transformers calls a
*static* cache, so ``cache_implementation="static"`` is honoured as it is. Options that need
something this state cannot give are refused with one line naming the option and the reason,
instead of an error from deep inside transformers or a warning that the option was ignored.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin
from transformers.generation.configuration_utils import GenerationMode

from ...errors import OptionError
from .cache import MossNetCache

# What MossNet's own cache already is. Any other cache_implementation (dynamic, offloaded,
# quantized, sliding_window, hybrid, ...) describes a key/value cache MossNet does not have.
SUPPORTED_CACHE_IMPLEMENTATIONS = (None, "static")


class UnsupportedGenerationError(OptionError):
    """A ``generate`` option that a MossNet model cannot honour (a ValueError)."""


def check_generation_options(generation_config, assisted: bool = False) -> None:
    """Raise :class:`UnsupportedGenerationError` for an option MossNet cannot honour.

    * Prompt-lookup and assisted decoding (``assisted``: transformers chose that mode, also
      for an ``assistant_model``): they check drafted tokens in one forward and then roll the
      cache back to the last accepted token. A recurrent state keeps no per-token history to
      roll back to.
    * A cache implementation other than the default or ``"static"``.

    Example:
        >>> from transformers import GenerationConfig
        >>> check_generation_options(GenerationConfig(cache_implementation="static"))  # fine
        >>> try:
        ...     check_generation_options(GenerationConfig(prompt_lookup_num_tokens=3), assisted=True)
        ... except UnsupportedGenerationError as err:
        ...     print(str(err)[:70])
        MossNet does not support prompt_lookup_num_tokens=3 (prompt-lookup dec
    """
    if assisted or getattr(generation_config, "prompt_lookup_num_tokens", None) is not None:
        lookup = getattr(generation_config, "prompt_lookup_num_tokens", None)
        option = f"prompt_lookup_num_tokens={lookup} (prompt-lookup decoding)" if lookup is not None else (
            "assisted decoding (assistant_model or assistant_early_exit)"
        )
        raise UnsupportedGenerationError(
            f"MossNet does not support {option}: it checks drafted tokens and then rolls the cache back "
            "to the last accepted one, and a recurrent state keeps no per-token history to roll back to; "
            "generate without it"
        )
    cache_impl = getattr(generation_config, "cache_implementation", None)
    if cache_impl not in SUPPORTED_CACHE_IMPLEMENTATIONS:
        raise UnsupportedGenerationError(
            f"MossNet does not support cache_implementation={cache_impl!r}: its recurrent cache is one "
            "fixed-size state per layer, already static (use the default or 'static')"
        )


class MossNetGenerationMixin(GenerationMixin):
    """``generate`` with MossNet's recurrent cache: the prompt (with its padding mask) in the
    first forward, then one token per step; options the cache cannot honour are refused."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we bring our own recurrent cache

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, cache=None, inputs_embeds=None,
                                      logits_to_keep=None, **kwargs):
        """First call: the whole (possibly left-padded) prompt with its mask (a long one is then
        prefilled in blocks by ``forward``). Later calls: the last token alone, through the
        recurrent step (a new token is never padding). ``logits_to_keep`` (1 from ``generate``)
        is passed on, so the prompt's logits are computed at its last position only."""
        if cache is not None and cache.seen_tokens > 0:
            inputs = {"input_ids": input_ids[:, -1:], "cache": cache, "use_cache": True}
        else:
            inputs = {"attention_mask": attention_mask, "use_cache": True, "cache": None}
            if inputs_embeds is not None:
                inputs["inputs_embeds"] = inputs_embeds
            else:
                inputs["input_ids"] = input_ids
            if attention_mask is not None and bool(attention_mask.all()):
                inputs["attention_mask"] = None  # nothing is padded
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def _validate_generation_mode(self, generation_mode, generation_config, *args, **kwargs):
        """Our refusal first: some transformers 5.x releases (5.17 among them) refuse assisted
        decoding of any stateful model here, with a message that does not say why; others do
        not check at all (then ``_prepare_cache_for_generation`` below refuses)."""
        check_generation_options(generation_config, assisted=generation_mode == GenerationMode.ASSISTED_GENERATION)
        parent = getattr(super(), "_validate_generation_mode", None)
        return parent(generation_mode, generation_config, *args, **kwargs) if parent is not None else None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, *args, **kwargs):
        """Refuse, before any work, what the recurrent cache cannot do (prompt-lookup and
        assisted decoding, key/value cache kinds); the cache itself is created by the first
        forward. ``cache_implementation="static"`` is what MossNetCache already is."""
        check_generation_options(generation_config, assisted=generation_mode == GenerationMode.ASSISTED_GENERATION)
        if generation_config.cache_implementation is None:
            return super()._prepare_cache_for_generation(
                generation_config, model_kwargs, generation_mode, *args, **kwargs
            )
        return None

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs["cache"] = outputs.cache
        if model_kwargs.get("attention_mask") is not None:
            mask = model_kwargs["attention_mask"]
            model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], num_new_tokens)], dim=-1)
        return model_kwargs

    def _reorder_cache(self, cache: MossNetCache, beam_idx: torch.LongTensor) -> MossNetCache:
        cache.reorder(beam_idx)
        return cache
