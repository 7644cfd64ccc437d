"""Portable export of MossNet inference: the prompt prefill and the one-token decode step as
pure functions of explicit recurrent state (for ``torch.export`` / ExecuTorch and ONNX Runtime).

* :class:`DecodeStep`: ``(input_ids (b, 1), conv_0..conv_{L-1}, ssm_0..ssm_{L-1})``
  -> ``(logits (b, V), new conv states..., new ssm states...)``; inputs are never mutated.
* :class:`Prefill`: ``(input_ids (b, T), states...)`` -> ``(last-position logits (b, V),
  new states...)``: a block of prompt tokens (exported for a fixed T; a long prompt is several
  blocks, the remainder goes through :class:`DecodeStep`).
* :func:`export_decode_step`, :func:`export_prefill` (``torch.export``) and
  :mod:`mossnet.export.onnx` (ONNX files plus a ``manifest.json`` that a runner needs).
"""

from .decode_step import DecodeStep, Prefill, export_decode_step, export_prefill, initial_states, state_names

__all__ = ["DecodeStep", "Prefill", "export_decode_step", "export_prefill", "initial_states", "state_names"]
