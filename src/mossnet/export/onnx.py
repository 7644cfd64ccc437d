"""ONNX export of the prefill block and the decode step, for ONNX Runtime on the CPU.

``export_onnx(model, out_dir)`` writes:

* ``decode_step.onnx``: inputs ``input_ids`` (batch, 1) int64, ``conv_state_{l}``,
  ``ssm_state_{l}``; outputs ``logits`` (batch, V) and ``new_conv_state_{l}``, ``new_ssm_state_{l}``;
* ``prefill.onnx``: the same with ``input_ids`` (batch, prefill_length);
* ``manifest.json``: state names and shapes, vocabulary size, eos id, prefill length, so that a
  runner (``scripts/generate_onnx.py``) needs no MossNet code;
* with ``quantize=True``, ``*.int8.onnx``: int8 dynamic quantization of the weight matrices
  (``onnxruntime.quantization.quantize_dynamic``).

Needs ``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime`` (the ``export`` extra).
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from mossnet.errors import MossNetError, OptionError

from .decode_step import export_decode_step, export_prefill, initial_states, state_names

MANIFEST = "manifest.json"


def _io_names(n_layers: int) -> tuple[list[str], list[str]]:
    states = state_names(n_layers)
    return ["input_ids", *states], ["logits", *(f"new_{n}" for n in states)]


def _sort_as_topk(self, stable=None, dim: int = -1, descending: bool = False):
    """``aten.sort.stable`` (the routers' stable sort) as ONNX TopK over the whole axis.

    TopK breaks ties by the lower index first, which is exactly the stable sort's order (the
    spec's "ties go to the lower expert index"); the exporter has no ONNX function for it."""
    from onnxscript import opset18 as op

    end = None if dim == -1 else dim + 1
    k = op.Shape(self, start=dim) if end is None else op.Shape(self, start=dim, end=end)
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def _to_onnx(program: torch.export.ExportedProgram, path: str, n_layers: int, opset: int) -> None:
    inputs, outputs = _io_names(n_layers)
    onnx_program = torch.onnx.export(
        program, (), input_names=inputs, output_names=outputs, dynamo=True, opset_version=opset,
        optimize=True, verbose=False, custom_translation_table={torch.ops.aten.sort.stable: _sort_as_topk},
    )
    written = onnx_program.model.opset_imports.get("")
    if written != opset:  # the exporter's version converter gives up silently and keeps its own opset
        raise OpsetError(f"the ONNX exporter could not convert the graph to opset {opset} (it wrote opset "
                         f"{written}); choose another opset (18 always works)")
    onnx_program.save(path, external_data=False)


class OpsetError(OptionError):
    """The exporter cannot write the requested ONNX opset."""


class Int8ExportError(MossNetError, RuntimeError):
    """The int8 graph onnxruntime's quantizer wrote does not load in onnxruntime (one line at the CLI)."""


def quantize_int8(src: str, dst: str) -> None:
    """int8 dynamic quantization with onnxruntime's ``quantize_dynamic``: MatMul / Gemm weights
    (the LM head) become int8 with activations quantized per call, and Gather tables (the
    embedding and the stacked expert weights that the decode step gathers) are stored in int8
    and dequantized after the gather."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer re-runs onnx shape inference and fails where an intermediate shape recorded
    # by the exporter disagrees with what inference derives (seen with torch 2.11's exporter: a
    # tied embedding / LM-head weight, "(32) vs (96)"). Those records are only hints: drop them
    # and let inference recompute every intermediate shape.
    model = onnx.load(src)
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        hintless = os.path.join(tmp, "model.onnx")
        onnx.save(model, hintless)
        quantize_dynamic(hintless, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"])
    _check_loads(dst)


def _check_loads(path: str) -> None:
    """Fail with a clear message, and leave no file behind, when onnxruntime cannot load ``path``.
    Seen on the GPU machine (torch 2.11's exporter, 2026-11-27): the quantized graph failed to
    load ("Add: Incompatible dimensions") while the fp32 graph was fine; torch 2.13 is fine."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001  (onnxruntime raises its own exception types)
        os.remove(path)
        raise Int8ExportError(
            f"the int8 graph {os.path.basename(path)} written by onnxruntime's quantizer does not load in "
            f"onnxruntime {ort.__version__} with torch {torch.__version__} ({str(err)[:200]}). The fp32 graphs "
            "are fine: export without int8 quantization, or with torch >= 2.13 where this works.") from None


def export_onnx(
    model,
    out_dir: str,
    prefill_length: int = 128,
    batch_size: int = 1,
    opset: int = 18,
    quantize: bool = False,
    tokenizer_file: str | None = None,
) -> dict:
    """Export both graphs to ``out_dir``; returns the manifest (also written as manifest.json)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    L = cfg.n_layers
    model = model.eval()
    files = {"decode_step": "decode_step.onnx", "prefill": "prefill.onnx"}
    _to_onnx(export_decode_step(model, batch_size), os.path.join(out_dir, files["decode_step"]), L, opset)
    _to_onnx(export_prefill(model, prefill_length, batch_size), os.path.join(out_dir, files["prefill"]), L, opset)
    if quantize:
        for key in ("decode_step", "prefill"):
            q = files[key].replace(".onnx", ".int8.onnx")
            quantize_int8(os.path.join(out_dir, files[key]), os.path.join(out_dir, q))
            files[f"{key}_int8"] = q
    states = initial_states(cfg, batch_size)
    manifest = {
        "format": "mossnet-onnx/1",
        "n_layers": L,
        "vocab_size": cfg.vocab_size,
        "batch_size": batch_size,
        "prefill_length": prefill_length,
        "eos_token_id": cfg.eos_token_id,
        "inputs": _io_names(L)[0],
        "outputs": _io_names(L)[1],
        "states": [{"name": n, "shape": list(t.shape), "dtype": "float32"} for n, t in zip(state_names(L), states)],
        "files": files,
    }
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, os.path.join(out_dir, "tokenizer.json"))
        manifest["tokenizer"] = "tokenizer.json"
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
