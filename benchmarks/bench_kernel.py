"""CPU kernel benchmark: droplab's dropout vs torch's eager dropout, the element-wise floor, MLP overhead.

A thin wrapper over ``droplab bench kernel`` (``droplab/bench/kernel.py``), so the script and the
command print the same table::

    python benchmarks/bench_kernel.py                 # about a minute on 2 cores
    python benchmarks/bench_kernel.py --quick         # a smoke run of seconds
    python benchmarks/bench_kernel.py --json out.json # also save every number and the conditions
"""

from __future__ import annotations

import sys

from droplab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernel", *sys.argv[1:]]))
