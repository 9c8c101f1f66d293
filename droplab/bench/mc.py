"""``droplab bench mc``: Monte-Carlo dropout prediction against what users do today.

Two 40-512-512-10 MLPs (ReLU, p = 0.5): (a) dropout only in the head, before the last Linear, and
(b) dropout after every hidden layer. Each predicts T samples for N inputs these ways, in one run:

* ``torch loop``: the model built with ``torch.nn.Dropout``, put in train mode, run T times
  (Baal-style MC dropout);
* ``torch replicate``: the same model in train mode on the input repeated T times, one pass of
  T x N rows (the replicate-in-memory approach);
* ``droplab predict``: :func:`droplab.mc.predict` on the very same model (its torch dropout is
  sampled by droplab for the call), batched to ``--max-batch`` rows with the prefix cached;
* ``droplab consistent`` (every-layer MLP): the same with ``consistent=True`` (one sub-network per
  sample for every input, as BatchBALD needs).

Then, when transformers is installed (``--bert-samples 0`` skips it), a BERT classifier from a random
config (hidden 256, 4 layers, 4 heads, sequence 64, batch 32, T = 50 by default) with (a) dropout
everywhere (hidden and attention, p = 0.1) and (b) dropout only in the classification head: the
``model.train()`` loop of T forwards against :func:`droplab.mc.predict` on the input mapping.

Time is the median over ``--repeats`` interleaved runs (after one warm-up each). Peak memory is
the rise of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
over its resident set after ``malloc_trim``: honest for CPU tensors on Linux, "n/a" elsewhere.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable

SUITE_HELP = "MC-dropout prediction (T samples) vs a torch.nn.Dropout loop and replicate-in-memory"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=100, help="MC samples T (default: 100)")
    parser.add_argument("--inputs", type=int, default=1000, help="inputs N (default: 1000)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="rows per droplab pass (default: droplab.mc.predict's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per approach (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-replicate", action="store_true", help="leave out the replicate-in-memory approach")
    parser.add_argument("--quick", action="store_true", help="smoke run: T=8, N=100, one repeat")
    parser.add_argument("--bert-samples", type=int, default=50,
                        help="MC samples of the BERT rows; 0 leaves them out (default: 50)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the rows and conditions as JSON")


def _mlp(head_only: bool):
    from torch import nn

    layers: list = [nn.Linear(40, 512), nn.ReLU()]
    if not head_only:
        layers.append(nn.Dropout(0.5))
    layers += [nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_rise_mib(fn: Callable[[], object]) -> float | None:
    """Rise of the peak RSS while ``fn`` runs, in MiB (None where the kernel cannot tell)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    if base is None or peak is None:
        return None
    return (peak - base) / 1024


def _approaches(model, x, samples: int, max_batch: int | None, replicate: bool,
                consistent: bool = False) -> dict[str, Callable]:
    import torch

    import droplab as dl

    def loop():
        model.train()
        with torch.no_grad():
            out = torch.stack([model(x) for _ in range(samples)])
        model.eval()
        return out

    def replicated():
        model.train()
        with torch.no_grad():
            out = model(x.repeat(samples, 1)).reshape(samples, x.shape[0], -1)
        model.eval()
        return out

    kwargs = {} if max_batch is None else {"max_batch": max_batch}

    def droplab_predict():
        return dl.mc.predict(model, x, samples, seed=0, **kwargs).samples

    def droplab_consistent():
        return dl.mc.predict(model, x, samples, seed=0, consistent=True, **kwargs).samples

    found = {"torch loop": loop}
    if replicate:
        found["torch replicate"] = replicated
    found["droplab predict"] = droplab_predict
    if consistent:
        found["droplab consistent"] = droplab_consistent
    return found


def measure(samples: int, inputs: int, max_batch: int | None, repeats: int, replicate: bool = True) -> list[dict]:
    """Rows of ``{"model", "approach", "seconds", "peak_mib", "speedup", "path"}`` for both models."""
    import torch

    import droplab as dl

    rows = []
    for label, head_only in (("head-only", True), ("every-layer", False)):
        torch.manual_seed(0)
        model = _mlp(head_only).eval()
        x = torch.randn(inputs, 40)
        fns = _approaches(model, x, samples, max_batch, replicate, consistent=not head_only)
        path = dl.mc.predict(model, x[:2], 1, seed=0).path
        rows += _timed(label, fns, repeats, path)
    return rows


def _timed(label: str, fns: dict[str, Callable], repeats: int, path: str) -> list[dict]:
    """Median time of each approach (interleaved, after a warm-up), its speed-up and peak memory."""
    rows = []
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: tracing, kernel compilation, allocator
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    loop_time = statistics.median(times["torch loop"])
    for name, fn in fns.items():
        seconds = statistics.median(times[name])
        rows.append({"model": label, "approach": name, "seconds": seconds, "peak_mib": _peak_rise_mib(fn),
                     "speedup": loop_time / seconds, "path": path if name.startswith("droplab") else ""})
    return rows


def _bert(head_only: bool, hidden: int, layers: int, length: int):
    import torch
    import transformers

    p = 0.0 if head_only else 0.1
    config = transformers.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=4 * hidden,
                                     max_position_embeddings=length,
                                     hidden_dropout_prob=p, attention_probs_dropout_prob=p, classifier_dropout=0.1,
                                     num_labels=4)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def measure_bert(samples: int, batch: int, hidden: int, layers: int, length: int, max_batch: int | None,
                 repeats: int) -> list[dict]:
    """BERT rows: the ``model.train()`` loop against :func:`droplab.mc.predict`, everywhere and head-only."""
    import torch

    import droplab as dl

    g = torch.Generator().manual_seed(0)
    x = {"input_ids": torch.randint(0, 1000, (batch, length), generator=g),
         "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    kwargs = {} if max_batch is None else {"max_batch": max_batch}
    rows = []
    for label, head_only in (("BERT everywhere", False), ("BERT head-only", True)):
        model = _bert(head_only, hidden, layers, length)

        def loop(model=model):
            model.train()
            with torch.no_grad():
                out = torch.stack([model(**x).logits for _ in range(samples)])
            model.eval()
            return out

        def droplab_predict(model=model):
            return dl.mc.predict(model, x, samples, seed=0, **kwargs).samples

        path = dl.mc.predict(model, x, 2, seed=0, **kwargs).path
        rows += _timed(label, {"torch loop": loop, "droplab predict": droplab_predict}, repeats, path)
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'model':<16} {'approach':<19} {'time (s)':>9} {'vs loop':>8} {'peak RSS rise (MiB)':>20}  path"
    lines = [header, "-" * len(header)]
    for r in rows:
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{r['model']:<16} {r['approach']:<19} {r['seconds']:>9.3f} {r['speedup']:>7.2f}x "
                     f"{peak:>20}  {r['path']}")
    return "\n".join(lines)


def _bert_shape(args: argparse.Namespace) -> dict | None:
    """The BERT benchmark's sizes, or None when it is skipped or transformers is missing."""
    if args.bert_samples < 1:
        return None
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("(BERT rows skipped: transformers is not installed; pip install 'droplab[integrations]')")
        return None
    if args.quick:
        return {"samples": 4, "batch": 4, "hidden": 64, "layers": 2, "length": 16}
    return {"samples": args.bert_samples, "batch": 32, "hidden": 256, "layers": 4, "length": 64}


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    samples, inputs, repeats = (8, 100, 1) if args.quick else (args.samples, args.inputs, args.repeats)
    for name, value in (("--samples", samples), ("--inputs", inputs), ("--repeats", repeats)):
        if value < 1:
            raise SystemExit(f"droplab bench mc: {name} must be a positive int, but got {value}")
    rows = measure(samples, inputs, args.max_batch, repeats, replicate=not args.skip_replicate)
    print(f"MC dropout, T={samples} samples, N={inputs} inputs, 40-512-512-10 MLP, p=0.5, "
          f"{torch.get_num_threads()} torch threads, median of {repeats}")
    print(format_table(rows))
    bert = _bert_shape(args)
    if bert is not None:
        bert_rows = measure_bert(bert["samples"], bert["batch"], bert["hidden"], bert["layers"], bert["length"],
                                 args.max_batch, repeats)
        print(f"\nBERT classifier, T={bert['samples']} samples, batch {bert['batch']}, hidden {bert['hidden']}, "
              f"{bert['layers']} layers, sequence {bert['length']}, median of {repeats}")
        print(format_table(bert_rows))
        rows += bert_rows
    if args.json:
        import platform

        conditions = {"samples": samples, "inputs": inputs, "repeats": repeats, "max_batch": args.max_batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                      "cpus": os.cpu_count()}
        from ..lab.files import write_json

        write_json(args.json, {"conditions": conditions, "rows": rows})
    return 0
