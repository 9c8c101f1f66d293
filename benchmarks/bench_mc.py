"""MC-dropout inference benchmark (issue 4's targets): droplab.mc.predict vs a torch.nn.Dropout loop and
replicate-in-memory, T = 100 samples of 1,000 inputs through a 40-512-512-10 MLP with dropout (a) only in the
head and (b) after every hidden layer.

A thin wrapper over ``droplab bench mc`` (``droplab/bench/mc.py``), so the script and the command print
the same table::

    python benchmarks/bench_mc.py                  # a few minutes on 2 idle cores
    python benchmarks/bench_mc.py --quick          # a smoke run
    python benchmarks/bench_mc.py --json out.json  # also save every number and the conditions
"""

from __future__ import annotations

import sys

from droplab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "mc", *sys.argv[1:]]))
