"""The numba CPU backend is robust: no writable cache, fork after use, concurrent Python threads.

Each scenario runs in a fresh interpreter (the threading layer and the cache locator are chosen once
per process) and checks its masks against the pure-torch reference, bit for bit.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each scenario compiles the kernels afresh in a new interpreter

CHECK = """
import torch
from droplab import rng
from droplab.kernels import cpu, reference

def check(seed):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(seed))  # big enough for 2 threads
    got = cpu.masked_scale(x, rng.split_seed(seed), 1, 0, 0, rng.drop_threshold(0.5), 2.0, (200_000,))
    want = reference.masked_scale(x, rng.split_seed(seed), 1, 0, 0, rng.drop_threshold(0.5), 2.0, (200_000,))
    assert torch.equal(got, want), seed
    return True
"""


def _run(script: str, prelude: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_THREADING_LAYER")}
    code = textwrap.dedent(prelude) + CHECK + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("temp_writable", [True, False])
def test_unwritable_cache_falls_back_and_never_raises(tmp_path, temp_writable):
    """Package tree and user cache dir unwritable, NUMBA_CACHE_DIR unset: a temp-dir cache, else uncached."""
    prelude = f"""
    import os, tempfile
    import numba.core.caching as caching
    allowed = {str(tmp_path) if temp_writable else "/nonexistent-droplab"!r}
    original = caching._CacheLocator.ensure_cache_path

    def ensure_cache_path(self):  # every location but the temp dir refuses, as on a read-only install
        if not self.get_cache_path().startswith(allowed):
            raise PermissionError(13, "read-only", self.get_cache_path())
        return original(self)

    caching._CacheLocator.ensure_cache_path = ensure_cache_path
    tempfile.tempdir = {str(tmp_path)!r}
    """
    script = f"""
    import droplab.functional as F
    y = F.dropout(torch.ones(1000), 0.5, seed=1)
    assert sorted(set(y.tolist())) == [0.0, 2.0]
    check(1)
    print("cached files:", sum(len(files) for _, _, files in os.walk({str(tmp_path)!r})))
    """
    result = _run(script, prelude)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = int(result.stdout.split("cached files:")[1])
    assert (cached > 0) == temp_writable, result.stdout


def test_forked_child_can_call_the_kernel_after_the_parent_did():
    """A forked child calling the CPU kernel after its parent ran it on two threads: no GNU OpenMP abort,
    and no wait on the thread pool that did not survive the fork (the child runs the serial kernels).

    The child keeps torch's two threads (so droplab would ask numba for two) and runs no large torch op
    itself (torch's own GNU OpenMP pool does not survive a fork either): inputs and expected outputs
    are made by the parent, compared with numpy.
    """
    script = """
    import os
    import numpy as np
    check(0)                                   # the parent runs the parallel kernel first, on 2 threads
    assert torch.get_num_threads() == 2 or os.cpu_count() == 1
    x = torch.randn(200_000)
    key, t = rng.split_seed(5), rng.drop_threshold(0.3)
    want = [reference.masked_scale(x, key, s, 0, 0, t, 1 / 0.7, (200_000,)).numpy() for s in (1, 2)]
    want_noise = reference.noise("normal", 100_000, key, 3, 0, 0).numpy()
    pid = os.fork()
    if pid == 0:
        try:
            ok = all(np.array_equal(cpu.masked_scale(x, key, s, 0, 0, t, 1 / 0.7, (200_000,)).numpy(), w)
                     for s, w in zip((1, 2), want))
            ok = ok and np.array_equal(cpu.noise("normal", 100_000, key, 3, 0, 0).numpy(), want_noise)
        except BaseException:
            ok = False
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    check(3)
    print("ok")
    """
    result = _run(script, timeout=180)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_dataloader_workers_apply_dropout_after_the_parent():
    script = """
    import droplab.functional as F
    from torch.utils.data import DataLoader, Dataset

    class Augmented(Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return F.dropout(torch.ones(200_000), 0.5, seed=i)

    check(0)
    batches = list(DataLoader(Augmented(), batch_size=4, num_workers=2))
    for b, batch in enumerate(batches):
        for j, row in enumerate(batch):
            assert torch.equal(row, F.dropout(torch.ones(200_000), 0.5, seed=4 * b + j))
    print("ok")
    """
    result = _run(script)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_concurrent_python_threads():
    """Several Python threads calling the kernels at once: every result equals the reference."""
    script = """
    from concurrent.futures import ThreadPoolExecutor
    from droplab.kernels import cpu
    check(0)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(check, range(60)))
        noise = list(pool.map(lambda s: torch.equal(cpu.noise("normal", 5000, (s, 1), 0, 0, 0),
                                                    reference.noise("normal", 5000, (s, 1), 0, 0, 0)), range(30)))
    assert all(results) and all(noise)
    print("ok")
    """
    result = _run(script)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
