#!/usr/bin/env python
"""CPU inference benchmark: MossNet (base) against SmolLM2-135M (dynamic and static KV cache)
and Mamba-2 (~130M): prefill time, decode latency (median / p90) and peak RSS per context length.

    python benchmarks/cpu_inference.py --markdown --json runs/bench/cpu.json --plot docs/cpu_inference.png
    python benchmarks/cpu_inference.py --tiny --contexts 16,32          # seconds, for tests

Same as ``mossnet bench --device cpu`` (arguments: :mod:`mossnet.cli.bench`); see :mod:`mossnet.bench`
for what is measured.
"""

import sys

from mossnet.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
