#!/usr/bin/env python
"""Inference benchmark: MossNet (base, and the dense / routed MossNets converted from SmolLM2)
against SmolLM2-135M (dynamic and static KV cache) and Mamba-2 (~130M): prefill time, decode
latency (median / p90) and peak memory per context length, on the CPU or (``--device cuda``) a GPU.

    python benchmarks/cpu_inference.py --markdown --json runs/bench/cpu.json --plot docs/cpu_inference.png
    python benchmarks/cpu_inference.py --tiny --contexts 16,32          # seconds, for tests

Same as ``mossnet bench`` (arguments: :mod:`mossnet.cli.bench`); see :mod:`mossnet.bench` for
what is measured.
"""

import sys

from mossnet.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
