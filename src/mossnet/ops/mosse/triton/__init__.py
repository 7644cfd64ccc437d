"""Triton fast path of the MoSSE scan (spec section 5): the chunkwise (SSD) form of
:mod:`..chunked` in kernels.

Per expert e, chunk c of L tokens, a_i = cumsum(dt * A_e) inside the chunk, K_j = dt_j B_j
(key), Q_i = C_i (query), h_c the (N, P) state at the start of chunk c:

    y_i     = sum_{j<=i} (Q_i . K_j) exp(a_i - a_j) x_j + exp(a_i) Q_i^T h_c + D x_i
    h_{c+1} = exp(a_L) h_c + sum_j exp(a_L - a_j) K_j x_j^T

One file per stage, each holding its kernels, their tuning candidates and their launchers:

* :mod:`.state`    ``fwd_h`` (chunk states, sequential over chunks) and ``bwd_dh`` (their gradients);
* :mod:`.output`   ``fwd_o`` (the output, all chunks in parallel) and ``bwd_dx``;
* :mod:`.grads`    ``bwd_dqk`` (dC, dB, ddt, dA, dD);
* :mod:`.function` the autograd function, :func:`~.function.mosse_scan_triton` (registered as
  ``impl="triton"`` by :mod:`mossnet.ops.mosse`) and :func:`~.function.why_unavailable`;
* :mod:`.geometry` the chunk table of the batched and packed (``cu_seqlens``) layouts;
* :mod:`.tuning`   how a kernel is declared, compiled and autotuned;
* :mod:`.options`  the execution choices (:class:`~.options.TritonScanOptions`) and the one
  function that reads their defaults from the environment. It imports no Triton.

Every accumulation is fp32, and so are the chunk states between passes unless
``TritonScanOptions.state_bf16`` stores them in bf16; inputs may be fp32, fp16 or bf16. This package
file imports nothing, so ``mossnet.ops.mosse.triton.options`` loads where Triton is absent.
"""
