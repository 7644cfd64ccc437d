"""lm-evaluation-harness model adapter for MossNet and any Hugging Face causal LM.

Importing this module registers the model name ``mossnet`` with lm-eval::

    import mossnet.eval.lm_eval_adapter          # or: python -m mossnet.eval --model mossnet ...
    lm_eval.simple_evaluate(model="mossnet", model_args="pretrained=DIR,batch_size=8", ...)

The adapter needs only the generic causal-LM interface: ``model(input_ids, attention_mask)``
returning ``.logits`` of shape (batch, time, vocab), and ``model.generate(...)``. It implements
lm-eval's three request types:

- ``loglikelihood(context, continuation)``: sum of log p(continuation tokens | everything before),
  and whether greedy decoding would have produced exactly the continuation;
- ``loglikelihood_rolling(text)``: log-likelihood of a whole text, scored in disjoint windows of
  ``max_length`` tokens, the first conditioned on the BOS (or EOS) token;
- ``generate_until(context, gen_kwargs)``: greedy (or sampled) generation through
  ``model.generate``, cut at the first stop string.

Tokenization follows lm-eval's conventions (``TemplateLM``): trailing spaces of a context move to
the continuation, the pair is tokenized jointly and split at the context's length, contexts are
truncated from the left. Batches are right-padded for scoring (a causal model never looks right,
so padding cannot change the scores) and left-padded for generation.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

try:
    # Import lm-eval's model table *before* registering ours: its registry loads the built-in
    # models (`hf`, ...) lazily only while it is empty, so registering first would hide them.
    import lm_eval.models  # noqa: F401
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the eval extra
    raise ImportError(
        "lm-evaluation-harness is not installed; install the evaluation extra with "
        "`pip install -e \".[eval]\"` (or `pip install lm-eval`)"
    ) from err

from mossnet.runtime import resolve_device

from .loading import load_causal_lm
from .loglikelihood import batches, context_length, pad_token_id, prefix_token_id, score_token_requests

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # used when neither the config nor the caller gives a context length
DEFAULT_BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------
# Generation helpers.


class _StopOnStrings(StoppingCriteria):
    """A row is done once its generated text contains a stop string.

    Called by ``generate`` with ``input_ids`` (batch, time); returns a bool tensor (batch,).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int) -> None:
        super().__init__()
        self.tokenizer, self.stops, self.prompt_width = tokenizer, list(stops), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=False)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop and (at := text.find(stop)) != -1:
            cut = min(cut, at)
    return text[:cut]


def _generation_kwargs(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's sampling options -> ``generate`` kwargs; temperature 0 (the default) is greedy."""
    kwargs = dict(gen_kwargs)
    temperature = float(kwargs.pop("temperature", 0.0))
    do_sample = kwargs.pop("do_sample", None)
    if do_sample is None:
        do_sample = temperature > 0.0
    if do_sample:
        kwargs.update(do_sample=True, temperature=temperature or 1.0)
    else:  # sampling knobs would only raise warnings in greedy mode
        kwargs = {k: v for k, v in kwargs.items() if k not in ("top_p", "top_k", "min_p")}
        kwargs["do_sample"] = False
    return kwargs


# ----------------------------------------------------------------------------------------------


@register_model("mossnet")
class MossNetLM(TemplateLM):
    """lm-eval model wrapping a MossNet checkpoint or any HF causal LM (``model_args`` below).

    Args:
        pretrained: checkpoint folder, or an already loaded ``PreTrainedModel``.
        tokenizer: tokenizer folder or object; defaults to the checkpoint's.
        batch_size: requests per forward pass ("auto" is accepted and means 8).
        device: "cpu", "cuda", "cuda:1", ...; default: CUDA if available.
        dtype: "float32" (default), "bfloat16" or "float16".
        max_length: context length in tokens; default: the config's ``max_position_embeddings``
            (or ``n_positions``), else 2048.
        max_gen_toks: default generation budget for ``generate_until``.
        add_bos_token: force (True/False) the tokenizer's special tokens on every encoded text;
            None keeps the tokenizer's default (as lm-eval's ``hf`` backend does).
        gguf_file: a GGUF file inside ``pretrained`` to load (dequantized).
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = None,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        device: str | None = None,
        dtype: str | torch.dtype | None = "float32",
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        **unused: Any,
    ) -> None:
        super().__init__()
        unused.pop("max_batch_size", None)  # lm-eval passes it to every backend
        if unused:
            warnings.warn(f"mossnet lm-eval adapter ignores model_args {sorted(unused)}", stacklevel=2)

        if isinstance(pretrained, str):
            model, loaded_tokenizer = load_causal_lm(
                pretrained, device=device, dtype=dtype, gguf_file=gguf_file,
                tokenizer_path=tokenizer if isinstance(tokenizer, str) else None,
                trust_remote_code=bool(_parse_bool(trust_remote_code)),
            )
            tokenizer = loaded_tokenizer if tokenizer is None or isinstance(tokenizer, str) else tokenizer
        else:
            if tokenizer is None:
                raise ValueError("pass `tokenizer=` together with an already loaded model")
            model = pretrained.to(resolve_device(device)).eval()
        self.model, self.tokenizer = model, tokenizer
        self._device = next(model.parameters()).device
        self.batch_size = self._parse_batch_size(batch_size)
        self._max_length = int(max_length) if max_length else None
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = _parse_bool(add_bos_token)
        self.pad_id = pad_token_id(tokenizer)

    @staticmethod
    def _parse_batch_size(batch_size: int | str) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            log.warning("batch_size=%s: automatic sizing is not implemented; using %d", batch_size, DEFAULT_BATCH_SIZE)
            return DEFAULT_BATCH_SIZE
        return max(1, int(batch_size))

    # --- properties lm-eval reads --------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Token that conditions an empty context: BOS if the tokenizer has one, else EOS."""
        return prefix_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self._max_length or context_length(self.model, DEFAULT_MAX_LENGTH)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    # --- tokenization ----------------------------------------------------------------------------

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``; special tokens as asked, else ``add_bos_token``, else the
        tokenizer's default."""
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        if add_special_tokens is None:
            return self.tokenizer.encode(string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # --- loglikelihood ----------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self,
        requests: Sequence[tuple[Any, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """Score ``(cache_key, context_ids, continuation_ids)`` requests, batched
        (:func:`mossnet.eval.loglikelihood.score_token_requests`)."""

        def cache(index: int, score: tuple[float, bool]) -> None:
            if requests[index][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[index][0], score)

        with tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood requests") as bar:
            return score_token_requests(
                self.model, [(context, continuation) for _, context, continuation in requests],
                batch_size=self.batch_size, max_length=self.max_length, pad_id=self.pad_id,
                progress=bar, on_result=cache,
            )

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each text, scored in disjoint windows of ``max_length`` tokens.

        The text is tokenized without special tokens; its first window is conditioned on
        ``prefix_token_id``, later windows on the tokens just before them.
        """
        windows, owner = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for context, predicted in map(
                lm_eval_utils.make_disjoint_window,
                lm_eval_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                ),
            ):
                windows.append((None, context, predicted))
                owner.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scores, strict=True):
            totals[index] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # --- generation -------------------------------------------------------------------------------

    def _left_padded(self, prompts: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, width) input ids and attention mask, padded on the left."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    @torch.inference_mode()
    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, EOS or ``max_gen_toks`` new tokens."""
        # Requests with the same generation settings share batches.
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)

        eos_text = self.tokenizer.decode([self.eot_token_id]) if self.eot_token_id is not None else None
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until requests") as bar:
            for indices in groups.values():
                settings = dict(requests[indices[0]].args[1])
                until = settings.pop("until", None) or []
                stops = [until] if isinstance(until, str) else list(until)
                if eos_text and eos_text not in stops:
                    stops.append(eos_text)
                max_new = int(settings.pop("max_gen_toks", self.max_gen_toks))
                generate_kwargs = _generation_kwargs(settings)
                budget = max(1, self.max_length - max_new)  # room left for the prompt
                prompts = {i: self.tok_encode(requests[i].args[0])[-budget:] for i in indices}
                order = sorted(indices, key=lambda i: -len(prompts[i]))
                for batch in batches(order, self.batch_size):
                    input_ids, attention_mask = self._left_padded([prompts[i] for i in batch])
                    output = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        max_new_tokens=max_new,
                        stopping_criteria=StoppingCriteriaList(
                            [_StopOnStrings(self.tokenizer, stops, input_ids.shape[1])]
                        ),
                        pad_token_id=self.pad_id,
                        **generate_kwargs,
                    )
                    new_tokens = output[:, input_ids.shape[1] :].tolist()
                    for i, tokens in zip(batch, new_tokens, strict=True):
                        text = cut_at_stop(self.tok_decode(tokens, skip_special_tokens=True), stops)
                        results[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(batch))
        return results  # type: ignore[return-value]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _parse_bool(value: Any) -> bool | None:
    """lm-eval passes model_args from the command line as strings."""
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes")
