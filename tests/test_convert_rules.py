"""Conversion rules for other libraries' dropout classes, tested against those libraries' real classes.

timm and torchvision cannot be imported here: torchvision's wheel on the registry is a CUDA build that
cannot load next to the CPU torch, and timm imports torchvision. Their dropout classes are single,
self-contained source files, so the test loads exactly those files out of the real wheels:

1. ``pip download --no-deps --only-binary=:all: timm==1.0.31 torchvision==0.28.0`` into a cache
   directory (``$DROPLAB_WHEEL_CACHE``, default ``~/.cache/droplab/test-wheels``), reused across runs;
   nothing is installed, and torch is never touched.
2. ``timm/layers/drop.py`` and ``torchvision/ops/stochastic_depth.py`` are read from the wheel (a zip)
   and executed as the modules ``timm.layers.drop`` and ``torchvision.ops.stochastic_depth`` under
   empty stub parent packages, so the classes carry their real qualified names (which is how droplab's
   rules recognize them). torchvision's file imports one helper, ``torchvision.utils._log_api_usage_once``
   (API usage telemetry), which the stub provides as a no-op.
3. The stubs are removed from ``sys.modules`` after each test (other packages probe for torchvision, and
   must not find a stub without a ``__spec__``).

When the registry cannot be reached, the tests skip with the reason; under ``CI=true`` they fail instead.
"""

import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import droplab as dl

WHEELS = {"timm": "1.0.31", "torchvision": "0.28.0"}
CACHE = Path(os.environ.get("DROPLAB_WHEEL_CACHE", Path.home() / ".cache" / "droplab" / "test-wheels"))


def _wheel(package: str) -> Path:
    version = WHEELS[package]
    found = sorted(CACHE.glob(f"{package}-{version}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                             "--quiet", "-d", str(CACHE), f"{package}=={version}"],
                            capture_output=True, text=True, timeout=600)
    found = sorted(CACHE.glob(f"{package}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        reason = f"cannot download the {package}=={version} wheel: {result.stderr.strip()[-300:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found[0]


def _load(package: str, member: str, stubs: dict[str, dict]) -> types.ModuleType:
    """Execute ``member`` of the package's wheel as its real module, under stub parent packages."""
    for name, attributes in stubs.items():
        stub = types.ModuleType(name)
        stub.__path__ = []
        stub.__dict__.update(attributes)
        sys.modules[name] = stub
    module_name = member[:-3].replace("/", ".")
    with zipfile.ZipFile(_wheel(package)) as wheel:
        source = wheel.read(member).decode()
    module = types.ModuleType(module_name)
    module.__package__ = module_name.rpartition(".")[0]
    module.__file__ = f"{_wheel(package)}/{member}"
    sys.modules[module_name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture
def timm_drop():
    saved = {k: v for k, v in sys.modules.items() if k == "timm" or k.startswith("timm.")}
    yield _load("timm", "timm/layers/drop.py", {"timm": {}, "timm.layers": {}})
    for name in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def tv_depth():
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    stubs = {"torchvision": {}, "torchvision.ops": {}, "torchvision.utils": {"_log_api_usage_once": lambda obj: None}}
    yield _load("torchvision", "torchvision/ops/stochastic_depth.py", stubs)
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules.update(saved)


class Residual(nn.Module):
    def __init__(self, drop: nn.Module):
        super().__init__()
        self.branch = nn.Linear(6, 6)
        self.drop = drop

    def forward(self, x):
        return x + self.drop(self.branch(x))


def _rows_all_dropped_or_scaled(y: torch.Tensor, x: torch.Tensor, keep: float) -> torch.Tensor:
    """Per row: True where the row was kept (scaled by 1/keep), asserting every row is kept or dropped whole."""
    kept = torch.isclose(y, x / keep).all(1)
    dropped = (y == 0).all(1)
    assert bool((kept | dropped).all())
    return kept


def test_timm_drop_path_is_a_site_and_converts(timm_drop):
    assert timm_drop.DropPath.__module__ == "timm.layers.drop" and not hasattr(sys.modules["timm"], "create_model")
    torch.manual_seed(0)
    model = nn.Sequential(Residual(timm_drop.DropPath(0.3)), Residual(timm_drop.DropPath(0.1)))
    assert [(s.name, s.kind, s.p, s.library) for s in dl.sites(model)] == [
        ("0.drop", "timm.DropPath", 0.3, "timm"), ("1.drop", "timm.DropPath", 0.1, "timm")]
    x = torch.randn(5, 6)
    eval_before = model.eval()(x)
    converted = dl.convert(model, seed=2)
    assert [type(m.drop) for m in converted] == [dl.nn.DropPath, dl.nn.DropPath]
    assert [s.library for s in dl.sites(converted)] == ["droplab", "droplab"]  # all dropout drawn by droplab
    torch.testing.assert_close(converted(x), eval_before)  # inference is the identity, as timm's
    branch = torch.ones(4000, 6)
    y = converted[0].drop.train()(branch)
    kept = _rows_all_dropped_or_scaled(y, branch, 0.7)  # timm's rule: whole rows, kept ones / keep_prob
    assert binomtest(int(kept.sum()), kept.numel(), 0.7).pvalue > 1e-3
    reference = timm_drop.drop_path(branch, 0.3, True)  # timm's own function: the same law
    assert binomtest(int(_rows_all_dropped_or_scaled(reference, branch, 0.7).sum()), 4000, 0.7).pvalue > 1e-3


def test_timm_drop_path_sampled_by_mc_before_conversion(timm_drop):
    torch.manual_seed(0)
    model = nn.Sequential(Residual(timm_drop.DropPath(0.3)), nn.Linear(6, 2)).eval()
    x = torch.randn(5, 6)
    res = dl.mc.predict(model, x, 10, seed=1)
    assert res.samples.std(0).min() > 0
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 10, seed=1))
    assert type(model[0].drop) is timm_drop.DropPath  # swapped back after the call


def test_timm_drop_path_without_scale_by_keep_is_left_alone(timm_drop):
    model = nn.Sequential(timm_drop.DropPath(0.2, scale_by_keep=False))
    assert type(dl.convert(model)[0]) is timm_drop.DropPath  # unscaled inference has no droplab equivalent


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_torchvision_stochastic_depth_converts_both_modes(tv_depth, mode):
    depth = tv_depth.StochasticDepth(0.4, mode)
    assert [(s.kind, s.p, s.library) for s in dl.sites(nn.Sequential(depth))] == [
        ("torchvision.StochasticDepth", 0.4, "torchvision")]
    converted = dl.convert(nn.Sequential(depth), seed=5)[0]
    assert converted.p == 0.4
    x = torch.ones(3000, 4)
    y = converted.train()(x)
    kept = _rows_all_dropped_or_scaled(y, x, 0.6)
    reference = tv_depth.stochastic_depth(x, 0.4, mode, training=True)
    ref_kept = _rows_all_dropped_or_scaled(reference, x, 0.6)
    if mode == "row":
        assert binomtest(int(kept.sum()), kept.numel(), 0.6).pvalue > 1e-3
        assert binomtest(int(ref_kept.sum()), ref_kept.numel(), 0.6).pvalue > 1e-3
    else:  # one draw for the whole batch, in torchvision and after conversion
        assert bool(kept.all() | (~kept).all()) and bool(ref_kept.all() | (~ref_kept).all())
        draws = [bool(_rows_all_dropped_or_scaled(converted(x[:2]), x[:2], 0.6)[0]) for _ in range(400)]
        assert binomtest(sum(draws), 400, 0.6).pvalue > 1e-3
    torch.testing.assert_close(converted.eval()(x), depth.eval()(x))


def test_register_conversion_by_qualified_name_needs_no_import():
    class Custom(nn.Module):
        def __init__(self, rate):
            super().__init__()
            self.rate = rate

        def forward(self, x):
            return nn.functional.dropout(x, self.rate, self.training)

    name = f"{Custom.__module__}.{Custom.__qualname__}"
    from droplab.conversion import register_conversion

    register_conversion(name, dl.nn.Dropout, lambda m, seed: dl.nn.Dropout(m.rate, seed=seed),
                        rate=lambda m: m.rate)
    model = nn.Sequential(Custom(0.25))
    assert [(s.kind, s.p) for s in dl.sites(model)] == [("test_convert_rules.Custom", 0.25)]
    assert type(dl.convert(model)[0]) is dl.nn.Dropout and dl.convert(nn.Sequential(Custom(0.25)))[0].p == 0.25
    with pytest.raises(ValueError, match="qualified_name must be"):
        register_conversion("NoDots", dl.nn.Dropout, lambda m, seed: None)


def test_function_forms_are_functional_sites(timm_drop, tv_depth):
    """timm's ``drop_path`` and torchvision's ``stochastic_depth`` called directly: their ``bernoulli_``."""
    from droplab import functional as DF

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            h = x + timm_drop.drop_path(self.fc(x), 0.3, self.training)
            return h + tv_depth.stochastic_depth(self.fc(h), 0.2, "row", self.training)

    torch.manual_seed(0)
    model, x = nn.Sequential(Block(), nn.Linear(6, 2)).eval(), torch.randn(5, 6)
    assert [(s.name, s.kind, round(s.p, 6)) for s in dl.sites(model, x)] == [
        ("0#0", "Tensor.bernoulli_", 0.3), ("0#1", "Tensor.bernoulli_", 0.2)]
    res = dl.mc.predict(model, x, 12, seed=1)
    assert res.samples.std(0).min() > 0
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 12, seed=1))
    assert torch.equal(dl.mc.predict(model, x, 12, seed=1).samples, res.samples)

    converted = dl.convert(model, seed=3, example_input=x).train()
    block = converted[0]
    assert (block.dropout_call0.p, block.dropout_call1.p) == pytest.approx((0.3, 0.2))
    out = block(x)
    keep1 = (DF.dropout(torch.ones(5, 1), 0.3, True, seed=3, step=0) != 0).float()
    keep2 = (DF.dropout(torch.ones(5, 1), 0.2, True, seed=4, step=0) != 0).float()
    with torch.no_grad():
        h = x + block.fc(x) * keep1 / 0.7
        expected = h + block.fc(h) * keep2 / 0.8
    torch.testing.assert_close(out.detach(), expected)


def test_transformers_stable_dropout_converts():
    sew_d = pytest.importorskip("transformers.models.sew_d.modeling_sew_d")
    model = nn.Sequential(nn.Linear(4, 4), sew_d.StableDropout(0.25))
    assert [(s.kind, s.p, s.library) for s in dl.sites(model)] == [("transformers.StableDropout", 0.25, "transformers")]
    converted = dl.convert(model, seed=1)
    assert type(converted[1]) is dl.nn.Dropout and converted[1].p == 0.25
    x = torch.ones(20000)
    reference = sew_d.StableDropout(0.25).train()(x)  # transformers' own: zeros, and 1/(1-p) where kept
    mine = converted[1].train()(x)
    for y in (reference, mine):
        kept = y != 0
        torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
        assert binomtest(int(kept.sum()), x.numel(), 0.75).pvalue > 1e-3


def _timm_dropped(module: nn.Module, size: int, maps: int = 600) -> tuple[int, int]:
    """Positions dropped by ``module`` over ``maps`` one-channel maps of ones (``size`` x ``size``)."""
    y = module.train()(torch.ones(maps, 1, size, size))
    return int((y == 0).sum()), y.numel()


def test_timm_drop_block_rate_is_timms_at_every_map_size(timm_drop):
    """timm's DropBlock drops a map-size-dependent fraction; droplab's rule computes it, checked against timm's code."""
    from droplab.graph.library_rules import timm_dropblock_rate

    torch.manual_seed(0)
    for size in (16, 32):
        rates = [_timm_dropped(timm_drop.DropBlock2d(0.1, 5), size) for _ in range(20)]
        fractions = torch.tensor([d / n for d, n in rates], dtype=torch.float64)
        expected = timm_dropblock_rate(0.1, 5, 1.0, size, size)
        z = (fractions.mean() - expected) / (fractions.std() / len(rates) ** 0.5)
        assert abs(float(z)) < 4, (size, float(fractions.mean()), expected)
    assert timm_dropblock_rate(0.1, 5, 1.0, 16, 16) > timm_dropblock_rate(0.1, 5, 1.0, 32, 32) + 0.02


def test_timm_drop_block_converts_and_drops_timms_fraction_at_two_map_sizes(timm_drop):
    from droplab.graph.library_rules import TimmDropBlock2d, timm_dropblock_rate

    model = nn.Sequential(nn.Conv2d(1, 1, 1), timm_drop.DropBlock2d(0.1, 5))
    assert [(s.name, s.kind, s.p, s.library) for s in dl.sites(model, torch.ones(2, 1, 16, 16))] == [
        ("1", "timm.DropBlock2d", 0.1, "timm")]  # the module, not its bernoulli_ block centres
    converted = dl.convert(model, seed=1, example_input=torch.ones(2, 1, 16, 16))
    block = converted[1]
    assert type(block) is TimmDropBlock2d and isinstance(block, dl.nn.DropBlock2d) and block.p == 0.1
    assert not block.per_channel  # timm couples the channels by default
    for size in (16, 32):  # probed at 16x16, right at 32x32 too
        dropped, n = _timm_dropped(block, size, maps=2000)
        mean, sd = n * timm_dropblock_rate(0.1, 5, 1.0, size, size), (n * 0.25 * 25) ** 0.5  # blocks of 25
        assert abs(dropped - mean) < 5 * sd, (size, dropped / n)
    x = torch.randn(3, 1, 9, 9)
    torch.testing.assert_close(block.eval()(x), x)
    dl.set_rate(converted, 0.0)
    assert torch.equal(block.train()(x), x)


def test_timm_drop_block_configurations_droplab_cannot_express_are_listed_and_left(timm_drop):
    unscaled = timm_drop.DropBlock2d(0.1, 3, scale_by_keep=False)
    model = nn.Sequential(unscaled)
    (site,) = dl.sites(model)
    assert site.kind == "timm.DropBlock2d" and site.note.startswith("not converted: scale_by_keep=False")
    assert dl.convert(model, seed=0)[0] is unscaled
    noisy = dl.convert(nn.Sequential(timm_drop.DropBlock2d(0.1, 3, with_noise=True, inplace=True)), seed=0)[0]
    assert noisy.with_noise and noisy.inplace and dl.sites(nn.Sequential(noisy))[0].note == ""


def test_inspect_lists_timms_drop_block(timm_drop):
    from droplab.lab.inspection import inspect_model

    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), timm_drop.DropBlock2d(0.15, 3), nn.Flatten(),
                          nn.Linear(2 * 8 * 8, 2))
    report = inspect_model(model, torch.randn(4, 2, 8, 8))
    assert [(s["name"], s["kind"], s["p"], s["library"]) for s in report["sites"]] == [
        ("1", "timm.DropBlock2d", 0.15, "timm")]


def test_timm_drop_block_function_in_a_forward_is_a_random_op(timm_drop):
    class Block(nn.Module):
        def forward(self, x):
            return timm_drop.drop_block_2d(x, 0.1, 3) if self.training else x

    found = dl.sites(nn.Sequential(Block()), torch.ones(2, 1, 8, 8))
    assert [(s.name, s.kind) for s in found] == [("0#0", "random op, not converted")]
    assert "max_pool2d" in found[0].note
