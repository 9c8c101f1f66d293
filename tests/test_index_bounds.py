"""Indices that enter a kernel are bounds-checked first: torch's exception, never a signal or garbage.

Hypothesis draws arbitrary index tensors (any integer dtype, empty to a few dozen entries, values from
the table's edges to +-2**62) and drives every index-taking op with them: the functional
``embedding_dropout`` and ``EmbeddingDropout`` in training mode (forward and backward), the registered ops
``droplab::embedding_dropout``, ``droplab::embedding_dropout_backward`` and ``droplab::rows_masked_scale``,
and each backend's entry points. Valid indices must give the oracle's values (``F.embedding`` of the
weight with the spec's row mask applied); invalid ones the exception ``torch.nn.functional.embedding``
raises for them, type and message. A missing check reads or writes outside the table, which can kill the
process, so the checks run in a subprocess (this file run as a script) and the test asserts it exited
normally and reported no failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, DIM = 10, 3
OUT_OF_RANGE = "index out of range in self"  # what F.embedding raises for an index outside [0, V)
EDGES = (0, 1, VOCAB - 1, VOCAB, VOCAB + 1, 50, -1, -3, -VOCAB, -VOCAB - 1, 10**6, -(10**6), 2**31 - 1, -(2**31),
         2**34, 2**62, -(2**62))


# --- the worker: runs in a subprocess ----------------------------------------------------------------------


def _torch_outcome(fn):
    """``("ok", value)`` or ``("raise", type name, message)`` of ``fn()``."""
    try:
        return ("ok", fn())
    except Exception as error:  # noqa: BLE001 - the exception itself is what is compared
        return ("raise", type(error).__name__, str(error))


def _oracle(indices, weight, p, seed, step, padding_idx=None):
    """torch's lookup of the weight with the spec's row mask (mask index = vocabulary entry), inverted scaling."""
    import torch.nn.functional as TF

    from droplab import rng

    keep = rng.keep_mask((weight.shape[0], 1), p, seed, step)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    return TF.embedding(indices, torch.where(keep, weight * scale, torch.zeros(())), padding_idx)


def _expect_same(label, got, want, failures, exact=True):
    if want[0] != got[0] or (want[0] == "raise" and want[1:] != got[1:]):
        failures.append(f"{label}: droplab {got[:3] if got[0] == 'raise' else 'returned'}, "
                        f"torch {want[:3] if want[0] == 'raise' else 'returned'}")
    elif want[0] == "ok":
        a, b = got[1], want[1]
        same = torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        if a.shape != b.shape or not same:
            failures.append(f"{label}: values differ from the oracle (garbage?)")


def _check_functional(indices, failures):
    import torch.nn.functional as TF

    import droplab.functional as F
    import droplab.nn as dnn

    weight = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(0))
    p, seed, step = 0.4, 7, 3
    want = _torch_outcome(lambda: _oracle(indices, weight, p, seed, step))
    if want[0] == "raise":  # torch's own exception for these indices, with the table unmasked
        want = _torch_outcome(lambda: TF.embedding(indices, weight))
    got = _torch_outcome(lambda: F.embedding_dropout(indices, weight, p, seed=seed, step=step))
    _expect_same("functional forward", got, want, failures)
    # backward: the weight gradient of a sum, against autograd through the oracle
    def grad_of(fn):
        w = weight.clone().requires_grad_(True)
        return torch.autograd.grad(fn(w).sum(), w)[0]
    want_g = _torch_outcome(lambda: grad_of(lambda w: _oracle(indices, w, p, seed, step)))
    if want_g[0] == "raise":
        want_g = _torch_outcome(lambda: grad_of(lambda w: TF.embedding(indices, w)))
    got_g = _torch_outcome(lambda: grad_of(lambda w: F.embedding_dropout(indices, w, p, seed=seed, step=step)))
    _expect_same("functional backward", got_g, want_g, failures, exact=False)
    # the module, training mode (its first forward draws step 0)
    module = dnn.EmbeddingDropout(torch.nn.Embedding(VOCAB, DIM), p, seed=seed)
    with torch.no_grad():
        module.embedding.weight.copy_(weight)
    want_m = _torch_outcome(lambda: _oracle(indices, weight, p, seed, 0))
    if want_m[0] == "raise":
        want_m = _torch_outcome(lambda: TF.embedding(indices, weight))
    got_m = _torch_outcome(lambda: module(indices).detach())
    _expect_same("EmbeddingDropout forward", got_m, want_m, failures)


def _check_ops(indices, failures):
    """The registered ops and each backend's entry points, called directly (no functional in front)."""
    import droplab.kernels as K
    from droplab import rng
    from droplab.functional import seed_tensor
    from droplab.kernels import available_backends, use_backend, variant_ops

    weight = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(1))
    seed_t, step_t = seed_tensor(5), torch.tensor(2)
    threshold, scale = rng.drop_threshold(0.5), 2.0
    valid_dtype = indices.dtype in (torch.int64, torch.int32)
    in_table = valid_dtype and (indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < VOCAB))
    in_mask = valid_dtype and (indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < rng.MAX_INDEX))

    def expect(label, fn, ok):
        outcome = _torch_outcome(fn)
        if ok and outcome[0] == "raise":
            failures.append(f"{label}: raised {outcome[1]}: {outcome[2]} for valid indices")
        elif not ok and (outcome[0] != "raise" or outcome[1] not in ("IndexError", "RuntimeError")
                         or (valid_dtype and (outcome[1], outcome[2]) != ("IndexError", OUT_OF_RANGE))):
            failures.append(f"{label}: {outcome[:3] if outcome[0] == 'raise' else 'returned'} for bad indices")
        return outcome

    rows = torch.randn(tuple(indices.shape) + (DIM,), generator=torch.Generator().manual_seed(2))
    oracle_keep = rng.keep_mask((VOCAB, 1), 0.5, 5, 2)
    for backend in [None] + available_backends():
        if backend == "triton":  # checked against the reference in test_triton.py (interpreter subprocess)
            continue
        context = use_backend(backend) if backend else use_backend(None)
        with context:
            tag = backend or "op"
            if backend is None:
                fwd = lambda: variant_ops.embedding_dropout(weight, indices, seed_t, step_t, 0, 0, threshold,  # noqa: E731
                                                             scale, -1)
                bwd = lambda: torch.ops.droplab.embedding_dropout_backward(rows, indices, VOCAB, -1, seed_t,  # noqa: E731
                                                                          step_t, 0, 0, threshold, scale)
                msk = lambda: variant_ops.rows_masked_scale(rows, indices, seed_t, step_t, 0, 0, threshold,  # noqa: E731
                                                             scale)
            else:
                fwd = lambda: K.embedding_forward(weight, indices, (5, 0), 2, 0, 0, threshold, scale)  # noqa: E731
                bwd = lambda: K.embedding_backward(rows, indices, VOCAB, -1, (5, 0), 2, 0, 0, threshold,  # noqa: E731
                                                   scale)
                msk = lambda: K.rows_masked_scale(rows, indices, (5, 0), 2, 0, 0, threshold, scale)  # noqa: E731
            got = expect(f"{tag} embedding forward", fwd, in_table)
            if got[0] == "ok" and in_table:
                want = torch.nn.functional.embedding(indices, torch.where(oracle_keep, weight * 2.0, 0.0))
                if not torch.equal(got[1], want):
                    failures.append(f"{tag} embedding forward: values differ from the oracle")
            got = expect(f"{tag} embedding backward", bwd, in_table)
            if got[0] == "ok" and in_table:
                kept = oracle_keep[indices.long()].squeeze(-1).unsqueeze(-1)
                want = torch.zeros(VOCAB, DIM).index_add_(0, indices.long().reshape(-1),
                                                          torch.where(kept, rows * 2.0, 0.0).reshape(-1, DIM))
                if not torch.allclose(got[1], want, rtol=1e-5, atol=1e-6):
                    failures.append(f"{tag} embedding backward: values differ from the oracle")
            expect(f"{tag} rows_masked_scale", msk, in_mask)


def _worker() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(st.integers(0, VOCAB - 1), st.sampled_from(EDGES), st.integers(-(2**63), 2**63 - 1))
    dtypes = st.sampled_from([torch.int64, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool])
    shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3)
    failures: list[str] = []

    @st.composite
    def index_tensors(draw):
        shape, dtype = draw(shapes), draw(dtypes)
        n = 1
        for size in shape:
            n *= size
        raw = draw(st.lists(values, min_size=n, max_size=n))
        info = torch.iinfo(dtype) if dtype != torch.bool else None
        clipped = [v if info is None else min(max(v, info.min), info.max) for v in raw]
        if dtype == torch.bool:
            clipped = [v % 2 for v in raw]
        return torch.tensor(clipped, dtype=torch.int64).reshape(shape).to(dtype)

    @settings(max_examples=int(os.environ.get("BOUNDS_EXAMPLES", "100")), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(index_tensors())
    def run(indices):
        before = len(failures)
        _check_functional(indices, failures)
        _check_ops(indices, failures)
        for i in range(before, len(failures)):
            failures[i] += f" [indices {indices.dtype} {indices.tolist()}]"

    run()
    # and the cases of the issue, each explicitly (a 10-row table)
    for case in ([50], [10], [10**6], [-3], [-11]):
        indices = torch.tensor(case)
        before = len(failures)
        _check_functional(indices, failures)
        _check_ops(indices, failures)
        for i in range(before, len(failures)):
            failures[i] += f" [indices {case}]"
    print(json.dumps(sorted(set(failures))[:40]))


# --- the test ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess running a hundred Hypothesis examples over every index-taking op
def test_index_taking_ops_raise_torch_errors_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    # a negative return code is a signal (SIGSEGV, SIGABRT from a corrupted heap): the process died
    assert proc.returncode == 0, f"worker exited with {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert failures == []


def test_issue_cases_in_process():
    """The issue's reproductions, now safe to run in the test process itself."""
    import torch.nn.functional as TF

    import droplab.nn as dnn

    module = dnn.EmbeddingDropout(torch.nn.Embedding(10, 4), 0.5, seed=0)
    for case in ([50], [10], [10**6], [-3], [-11]):
        with pytest.raises(IndexError, match="^index out of range in self$"):
            module(torch.tensor(case))
        with pytest.raises(IndexError, match="^index out of range in self$"):
            TF.embedding(torch.tensor(case), module.embedding.weight)
    out = module(torch.tensor([[9, 0]]))
    out.sum().backward()  # a valid batch still trains
    assert module.embedding.weight.grad.shape == (10, 4)


if __name__ == "__main__":
    _worker()
