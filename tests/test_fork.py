"""Fork at any moment (issue 19): a child forked before, during or after its parent's first kernel call,
or after the parent ran a multi-threaded torch op but no droplab kernel, runs its dropout without hanging.

Each scenario runs in a fresh interpreter (what a process has imported, compiled and started is the
point). Children draw with the modules and functional ops (a small and a large tensor, the large one big
enough that an unforked process would use two threads) and save what they drew; the parent waits for them
under a deadline, then checks every draw against the pure-torch reference backend, bit for bit. The
issue's case (a parent that ran torch's thread pool but no kernel) stays in the quick run; the other
moments, each an interpreter of its own (one compiling into an empty cache), are marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

DEADLINE_S = 150  # per child; a hung child is killed and the scenario fails

HARNESS = """
import os, signal, sys, time
import torch

DEADLINE = %(deadline)d
OUT = %(out)r

# the inputs are made before any fork: a child whose parent used torch's intra-op pool (GNU OpenMP) hangs in
# its own first parallel torch op (DataLoader workers set one thread for that reason); droplab's must not
torch.set_num_threads(2)
SMALL = torch.arange(16, dtype=torch.float32) / 16
LARGE = torch.arange(300_000, dtype=torch.float32) / 300_000

def draw():
    import droplab.functional as F
    import droplab.nn as dnn
    return [dnn.Dropout(0.5, seed=3)(SMALL), dnn.Dropout(0.3, seed=4)(LARGE), F.dropout(LARGE, 0.5, seed=5, step=2)]

def child(tag):
    try:
        torch.save(draw(), os.path.join(OUT, tag + ".pt"))
        code = 0
    except BaseException as error:
        print("child", tag, "raised", repr(error), file=sys.stderr)
        code = 3
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)

children = {}

def fork(tag):
    pid = os.fork()
    if pid == 0:
        child(tag)
    children[pid] = tag

def wait_all():
    start = time.monotonic()
    failed = []
    while children:
        for pid, tag in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[pid]
                if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    failed.append((tag, status))
        if children and time.monotonic() - start > DEADLINE:
            for pid, tag in children.items():
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                failed.append((tag, "hung"))
            children.clear()
        time.sleep(0.05)
    return failed

def check(tags):
    from droplab.kernels import use_backend
    with use_backend("reference"):
        want = draw()
    for tag in tags:
        got = torch.load(os.path.join(OUT, tag + ".pt"))
        assert all(torch.equal(g, w) for g, w in zip(got, want)), tag
"""


def _run(tmp_path, body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = HARNESS % {"deadline": DEADLINE_S, "out": str(tmp_path)} + textwrap.dedent(body)
    environment = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_NUM_THREADS")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=3 * DEADLINE_S)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0 and "ok" in result.stdout, (result.stdout[-2000:], result.stderr[-3000:])


@pytest.mark.slow
def test_child_forked_before_the_first_kernel_call(tmp_path):
    result = _run(tmp_path, """
    import droplab
    fork("before")
    failed = wait_all()
    assert not failed, failed
    draw()                            # the parent's own first call, after its child's
    check(["before"])
    print("ok")
    """)
    _assert_ok(result)


def test_child_forked_after_a_multithreaded_torch_op_but_no_kernel(tmp_path):
    """The child's first dropout waited forever in a futex: it opened numba's GNU OpenMP pool, which its
    parent's torch had started and the fork did not carry over."""
    result = _run(tmp_path, """
    import droplab
    a = torch.randn(600, 600)
    for _ in range(3):
        (a @ a).relu_().sum()         # torch's intra-op pool (GNU OpenMP) is started in the parent
    fork("after-torch-op")
    failed = wait_all()
    assert not failed, failed
    check(["after-torch-op"])
    print("ok")
    """)
    _assert_ok(result)


@pytest.mark.slow
def test_multiprocessing_child_that_imports_droplab_itself(tmp_path):
    """A fork child of a parent that never imported droplab (the parent ran torch's pool) is still a child."""
    result = _run(tmp_path, """
    import multiprocessing as mp
    a = torch.randn(600, 600)
    (a @ a).relu_().sum()
    process = mp.get_context("fork").Process(target=child, args=("mp-child",))
    process.start()
    process.join(DEADLINE)
    if process.is_alive():
        process.kill()
        raise SystemExit("the multiprocessing child hung")
    assert process.exitcode == 0, process.exitcode
    check(["mp-child"])
    print("ok")
    """)
    _assert_ok(result)


@pytest.mark.slow
def test_child_forked_after_the_first_kernel_call(tmp_path):
    result = _run(tmp_path, """
    want = draw()                     # the parent runs the kernels, the large ones on two threads
    fork("after")
    failed = wait_all()
    assert not failed, failed
    check(["after"])
    print("ok")
    """)
    _assert_ok(result)


@pytest.mark.slow
def test_children_forked_during_the_first_kernel_call(tmp_path):
    """The parent's first call imports numba and compiles into an empty cache in a second thread; children are
    forked while it runs: during the import, while numba's compiler lock is held, and in between."""
    cache = tmp_path / "numba-cache"
    result = _run(tmp_path, """
    import threading
    import droplab
    first = threading.Thread(target=draw)
    first.start()
    fork("at-start")
    tags = ["at-start"]
    lock_seen = False
    deadline = time.monotonic() + DEADLINE
    def compiler_lock_held():
        compiler = sys.modules.get("numba.core.compiler_lock")
        if compiler is None:
            return False
        if compiler.global_compiler_lock._lock.acquire(False):
            compiler.global_compiler_lock._lock.release()
            return False
        return True                   # held by the compiling thread right now

    while first.is_alive() and time.monotonic() < deadline:
        if not lock_seen and compiler_lock_held():
            lock_seen = True
            fork("compiling")
            tags.append("compiling")
        elif len(tags) < 6:
            time.sleep(0.3)
            fork(f"t{len(tags)}")
            tags.append(f"t{len(tags)}")
        time.sleep(0.01)
    first.join()
    failed = wait_all()
    assert not failed, failed
    assert lock_seen, "no child was forked while the compiler lock was held"
    check(tags)
    print("ok", tags)
    """, env={"NUMBA_CACHE_DIR": str(cache)})
    _assert_ok(result)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_children_use_the_serial_kernels_only():
    """The fork flag is set from droplab's import on, even before the CPU backend was loaded."""
    code = textwrap.dedent("""
    import os, torch
    import droplab.kernels as kernels
    assert not kernels.in_forked_child()
    pid = os.fork()
    if pid == 0:
        from droplab.kernels import cpu
        os._exit(0 if kernels.in_forked_child() and cpu._threads(10**7) == 1 else 4)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, status
    print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE_S)
    _assert_ok(result)
