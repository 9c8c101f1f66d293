"""Dropout inside real models: training step, inference and MC dropout, no dropout vs torch's vs droplab's.

A thin wrapper over ``droplab bench models`` (``droplab/bench/models.py``), so the script and the
command print the same table::

    python benchmarks/bench_models.py                                # about 12 minutes on 2 cores
    python benchmarks/bench_models.py --threads 1 --clock cpu        # steadier on a loaded machine
    python benchmarks/bench_models.py --models mlp bert-32-eager     # a subset
    python benchmarks/bench_models.py --quick                        # a smoke run
"""

from __future__ import annotations

import sys

from droplab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "models", *sys.argv[1:]]))
