"""The kernels' fallback cache is private to the user (issue 19, CWE-377).

When numba can write no cache next to the package nor in the user's own cache directory, droplab caches
in ``<tmp>/droplab-numba-cache-<uid>``: a predictable name in a shared directory. numba unpickles the
index files it finds there, so a directory another user created first is code they run in the victim's
process. The directory is created with mode 0700 and used only while it is a directory (not a link)
owned by the user that no one else may write; anything else is never read.
"""

from __future__ import annotations

import os
import pickle
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from droplab.kernels import cpu

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership and modes")


def _fresh_fallback(monkeypatch, tmp_dir) -> str | None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))
    monkeypatch.setattr(cpu, "_private_cache", cpu._PRIVATE_UNCHECKED)
    return cpu._fallback_cache_dir()


def test_the_fallback_is_created_private(monkeypatch, tmp_path):
    os.umask(previous := os.umask(0))  # read the umask without changing it
    path = _fresh_fallback(monkeypatch, tmp_path)
    assert path == str(tmp_path / f"droplab-numba-cache-{os.getuid()}")
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 & ~previous
    assert info.st_uid == os.getuid()
    assert _fresh_fallback(monkeypatch, tmp_path) == path  # an existing private directory is used again


@pytest.mark.parametrize("mode,private", [(0o700, True), (0o755, True), (0o750, True), (0o770, False),
                                          (0o777, False), (0o1777, False), (0o702, False)])
def test_a_directory_others_may_write_is_not_private(tmp_path, mode, private):
    path = tmp_path / "cache"
    path.mkdir()
    path.chmod(mode)
    assert cpu.private_dir(str(path)) is private


def test_links_files_and_missing_paths_are_not_private(tmp_path):
    target = tmp_path / "mine"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("")
    assert cpu.private_dir(str(target))
    assert not cpu.private_dir(str(tmp_path / "link"))  # even to a private directory: the link is the name
    assert not cpu.private_dir(str(tmp_path / "file"))
    assert not cpu.private_dir(str(tmp_path / "missing"))


def test_a_directory_owned_by_someone_else_is_not_private(monkeypatch, tmp_path):
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    assert cpu.private_dir(str(path))
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(path).st_uid + 1)  # the reader is another user
    assert not cpu.private_dir(str(path))


def test_a_planted_directory_is_refused_with_a_warning(monkeypatch, tmp_path):
    planted = tmp_path / f"droplab-numba-cache-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="not private to this user"):
        assert _fresh_fallback(monkeypatch, tmp_path) is None


# ----------------------------------------------------------------------------- the attack, re-enacted
VICTIM = """
import os, sys, tempfile, warnings
import numba.core.caching as caching
shared = {shared!r}
original = caching._CacheLocator.ensure_cache_path

def ensure_cache_path(self):  # every location but the shared temp dir refuses, as on a read-only install
    if not self.get_cache_path().startswith(shared):
        raise PermissionError(13, "read-only", self.get_cache_path())
    return original(self)

caching._CacheLocator.ensure_cache_path = ensure_cache_path
tempfile.tempdir = shared
warnings.simplefilter("always")
import torch
import droplab.functional as F
y = F.dropout(torch.ones(1000), 0.5, seed=1)
assert sorted(set(y.tolist())) == [0.0, 2.0]
print("ran")
"""


class _Payload:
    """What the attacker plants as a cache index: unpickling it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _victim(shared: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    return subprocess.run([sys.executable, "-c", VICTIM.format(shared=shared)], capture_output=True, text=True,
                          env=env, timeout=600)


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="re-enacting needs root and a 'nobody' user")
def test_a_cache_planted_by_another_user_is_never_read():
    """As ``nobody``, create the victim's cache directory first (mode 0777) and plant an index file for every
    kernel the victim will load; the victim (root) must not unpickle any of them."""
    shared = tempfile.mkdtemp(prefix="droplab-shared-tmp-", dir="/tmp")
    try:
        os.chmod(shared, 0o1777)  # a shared temp dir: sticky and world-writable, as /tmp is
        # 1. which index files does a run read? one legitimate run in a private scratch dir shows it
        scratch = tempfile.mkdtemp(prefix="droplab-scratch-")
        legit = _victim(scratch)
        assert legit.returncode == 0, legit.stderr[-3000:]
        cache = os.path.join(scratch, f"droplab-numba-cache-{os.getuid()}")
        indexes = [os.path.relpath(os.path.join(d, f), cache) for d, _, files in os.walk(cache)
                   for f in files if f.endswith(".nbi")]
        shutil.rmtree(scratch)
        assert indexes
        # 2. the payload: the same names, each a pickle that creates the marker when loaded
        marker = os.path.join(shared, "planted-code-ran")
        staging = os.path.join(shared, "staging")
        for rel in indexes:
            os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
            with open(os.path.join(staging, rel), "wb") as f:
                pickle.dump(_Payload(marker), f)
        for d, _, files in os.walk(staging):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        # 3. the attacker, another user, creates the victim's directory first and plants the files
        planted = os.path.join(shared, f"droplab-numba-cache-{os.getuid()}")
        attacker = _nobody()
        subprocess.run(["/bin/sh", "-c", f"mkdir -m 777 '{planted}' && cp -R '{staging}/.' '{planted}/' && "
                        f"chmod -R a+rwX '{planted}'"], check=True, user=attacker.pw_uid, group=attacker.pw_gid,
                       timeout=60)
        assert os.lstat(planted).st_uid == attacker.pw_uid
        # 4. the victim runs dropout: it works, warns, and never loads what was planted
        result = _victim(shared)
        assert result.returncode == 0 and "ran" in result.stdout, result.stderr[-3000:]
        assert not os.path.exists(marker), "a cache index planted by another user was unpickled"
        assert "not private to this user" in result.stderr
        assert os.lstat(planted).st_uid == attacker.pw_uid and not any(
            os.lstat(os.path.join(d, f)).st_uid != attacker.pw_uid for d, _, fs in os.walk(planted) for f in fs)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.slow
def test_the_victim_run_reads_the_fallback_it_created(tmp_path):
    """The re-enactment's victim script does use the fallback (so the test above exercises the rule): a
    second run in the same shared dir finds the cache it wrote there."""
    shared = str(tmp_path)
    first = _victim(shared)
    assert first.returncode == 0, first.stderr[-3000:]
    cache = os.path.join(shared, f"droplab-numba-cache-{os.getuid()}")
    assert stat.S_IMODE(os.lstat(cache).st_mode) & 0o077 == 0
    assert any(f.endswith(".nbi") for _, _, files in os.walk(cache) for f in files)
