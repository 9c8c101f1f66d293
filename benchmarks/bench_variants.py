"""Variant benchmark: channel, locked and noise-shaped dropout, DropBlock2d and VariationalLSTM vs torch ops.

A thin wrapper over ``droplab bench variants`` (``droplab/bench/variants.py``), so the script and
the command print the same table::

    python benchmarks/bench_variants.py                  # a few minutes on 2 busy cores
    python benchmarks/bench_variants.py --quick          # a smoke run of seconds
    python benchmarks/bench_variants.py --json out.json  # also save every number and the conditions
"""

from __future__ import annotations

import sys

from droplab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "variants", *sys.argv[1:]]))
