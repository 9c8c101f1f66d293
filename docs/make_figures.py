"""Regenerate every figure of the documentation site with droplab's own code.

    python docs/make_figures.py                   # into docs/figures/ (then commit them)
    python docs/make_figures.py --out /tmp/figs   # anywhere else (the tests do this)
    python docs/make_figures.py --only masks      # one group: masks, schedules, benchmarks, report

What is drawn, and from what:

* ``masks/<variant>.png``: one keep mask per dropout variant, drawn by droplab's functional ops with a fixed
  seed (white = kept, black = dropped; Gaussian dropout shows its multiplicative noise), and ``masks.png``, all
  of them side by side.
* ``schedules.png``: every schedule of :mod:`droplab.schedules` over 1,000 steps.
* ``bench-kernel.png``, ``bench-variants.png``, ``bench-mc.png``: the benchmark tables of the performance guide
  (``docs/guides/performance.md``, else the README), plotted; the tables are what ``droplab bench`` printed on the
  measuring machine, so the plots change only when someone re-measures and updates the tables.
* ``compare-report.png``: a screenshot, in headless Chromium, of the report that ``droplab compare`` writes for a
  short run (scikit-learn's digits, 6 epochs: offline and about 20 s on 2 cores). Skipped, with a message, when
  Chromium or chromedriver is missing.

Matplotlib uses the Agg backend; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
GROUPS = ("masks", "schedules", "benchmarks", "report")
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"
SEED = 2026


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- masks ------------------------------------------------------------------------------------------------------

def variant_masks() -> dict[str, tuple[str, torch.Tensor]]:
    """``name -> (caption, 2-D image)`` for each variant, each drawn by droplab's own functional op."""
    import droplab.functional as F

    ones = torch.ones
    seeds = iter(range(SEED, SEED + 100))  # a different seed per variant, so no two pictures share a pattern
    channels = F.dropout2d(ones(1, 16, 8, 8), 0.5, seed=next(seeds)) > 0                # 16 channels of 8x8
    channel_grid = channels.reshape(4, 4, 8, 8).permute(0, 2, 1, 3).reshape(32, 32)
    weights = torch.full((1, 32, 32), 1.0 / 32)
    attention = F.attention_dropout(weights, 0.3, seed=next(seeds))[0] > 0
    weight, _ = F.dropconnect_weights(ones(32, 32), None, 0.5, seed=next(seeds))
    embedding = F.embedding_dropout(torch.arange(32), ones(32, 32), 0.3, seed=next(seeds)) > 0
    return {
        "dropout": ("Dropout p=0.5: every element independently",
                    F.dropout(ones(32, 32), 0.5, seed=next(seeds)) > 0),
        "channel": ("Dropout2d p=0.5: whole channels (16 channels of 8x8)", channel_grid),
        "dropblock": ("DropBlock2d p=0.15, block 5: contiguous squares",
                      F.dropblock2d(ones(1, 1, 48, 48), 0.15, block_size=5, seed=next(seeds))[0, 0] > 0),
        "locked": ("LockedDropout p=0.5: one mask per sequence, shared over time (rows = time)",
                   F.locked_dropout(ones(32, 1, 32), 0.5, seed=next(seeds))[:, 0] > 0),
        "droppath": ("DropPath p=0.3: whole examples' residual branches (rows = examples)",
                     F.drop_path(ones(32, 32), 0.3, seed=next(seeds)) > 0),
        "batch-shared": ("noise_shape=(1, None): one mask shared by the batch (rows = examples)",
                         F.dropout(ones(32, 32), 0.5, seed=next(seeds), noise_shape=(1, None)) > 0),
        "dropconnect": ("DropConnect p=0.5: a 32x32 weight matrix", weight > 0),
        "embedding": ("EmbeddingDropout p=0.3: whole words (rows = vocabulary)", embedding),
        "attention": ("AttentionDropout p=0.3: attention weights (query x key)", attention),
        "gaussian": ("GaussianDropout p=0.5: multiplicative noise N(1, p/q)",
                     F.gaussian_dropout(ones(32, 32), 0.5, seed=next(seeds))),
    }


def make_masks(out: Path) -> list[Path]:
    plt = pyplot()
    masks = variant_masks()
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = []
    for name, (caption, image) in masks.items():
        fig, ax = plt.subplots(figsize=(3.2, 3.4), dpi=100)
        draw_mask(ax, image, caption)
        fig.tight_layout()
        written.append(save(fig, out / "masks" / f"{name}.png"))
    # drawn for the home page's content column: every title at least MIN_TEXT_PX high there
    fig, axes = plt.subplots(2, 5, figsize=(10, 5.8), dpi=150)
    for ax, (caption, image) in zip(axes.flat, masks.values()):
        draw_mask(ax, image, panel_title(caption), fontsize=11.5, width=0)
    fig.suptitle("droplab's dropout variants: one mask each (white = kept, black = dropped)", fontsize=13)
    fig.tight_layout(h_pad=1.2, w_pad=0.4)
    written.append(save(fig, out / "masks.png"))
    return written


def panel_title(caption: str) -> str:
    """Two short lines for the overview's panel: the class, then its settings ("DropPath\\np=0.3")."""
    head = caption.split(":")[0]
    if head.startswith("noise_shape"):
        return f"Dropout p=0.5\n{head}"
    name, _, settings = head.partition(" ")
    return f"{name}\n{settings}"


def draw_mask(ax, image: torch.Tensor, caption: str, fontsize: float = 9, width: int = 30) -> None:
    import textwrap

    values = image.float()
    ax.imshow(values, cmap="gray", vmin=0, vmax=float(values.max()) if values.dtype != torch.bool else 1,
              interpolation="nearest")
    ax.set_title("\n".join(textwrap.wrap(caption, width)) if width else caption, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


# ---- schedules --------------------------------------------------------------------------------------------------

def make_schedules(out: Path) -> list[Path]:
    from droplab import schedules as S

    curves = {
        "constant(0.3)": S.constant(0.3),
        "linear(0, 0.5, 600, delay=100)": S.linear(0.0, 0.5, 600, delay=100),
        "cosine(0, 0.5, 800)": S.cosine(0.0, 0.5, 800),
        "stepwise([0.1, 0.3, 0.5], [300, 600])": S.stepwise([0.1, 0.3, 0.5], [300, 600]),
        "cyclical(0.1, 0.4, 250)": S.cyclical(0.1, 0.4, 250),
        "curriculum(0.5, 0.005)": S.curriculum(0.5, 0.005),
        "early(0.3, 400, mode='linear')": S.early(0.3, 400, mode="linear"),
    }
    plt = pyplot()
    steps = range(0, 1001)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    for label, schedule in curves.items():
        ax.plot(list(steps), [schedule(t) for t in steps], label=label, linewidth=1.6)
    ax.set_xlabel("step t")
    ax.set_ylabel("drop rate p(t)")
    ax.set_title("droplab.schedules")
    ax.legend(fontsize=9, loc="upper right", ncol=2)
    ax.set_ylim(0, 0.75)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return [save(fig, out / "schedules.png")]


# ---- benchmarks -------------------------------------------------------------------------------------------------

def benchmark_source() -> Path:
    for candidate in (ROOT / "docs" / "guides" / "performance.md", ROOT / "README.md"):
        if candidate.exists() and "| torch F.dropout |" in candidate.read_text(encoding="utf-8"):
            return candidate
    raise SystemExit("make_figures: no benchmark table (a row '| ... | torch F.dropout | ...') in "
                     "docs/guides/performance.md or README.md")


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table whose first column header is ``first_header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[i + 2:]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(dict(zip(cells, (c.strip() for c in row.strip().strip("|").split("|")))))
            return rows
    raise SystemExit(f"make_figures: no table with a first column {first_header!r} in the benchmark page")


def make_benchmarks(out: Path) -> list[Path]:
    text = benchmark_source().read_text(encoding="utf-8")
    written = [plot_kernel(markdown_table(text, "elements"), out / "bench-kernel.png"),
               plot_variants(markdown_table(text, "case"), out / "bench-variants.png")]
    mc = mc_rows(text)
    if mc:
        written.append(plot_mc(mc, out / "bench-mc.png"))
    return written


def plot_kernel(rows: list[dict[str, str]], path: Path) -> Path:
    plt = pyplot()
    ops = ("droplab dropout", "torch F.dropout", "x * 2.0")  # same colours as the variants plot
    sizes = sorted({r["elements"] for r in rows}, key=lambda s: int(s.split("^")[1]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    width = 0.26
    for k, op in enumerate(ops):
        times = [next(float(r["fwd+bwd ms"]) for r in rows if r["elements"] == s and r["op"] == op) for s in sizes]
        ax.bar([i + (k - 1) * width for i in range(len(sizes))], times, width, label=op)
    ax.set_xticks(range(len(sizes)), [f"{s} elements" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, ms (log)")
    ax.set_title("CPU kernel: droplab vs torch vs the x*2.0 floor (fp32, p=0.5)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def plot_variants(rows: list[dict[str, str]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    # "locked dropout (T, N, F)" stays whole; "VariationalLSTM, 2 layers, ..." -> "VariationalLSTM"
    labels = [re.match(r"[^,(]*(\([^)]*\))?", r["case"].split(" p=")[0])[0].strip() for r in rows]
    columns = [("droplab ms", "droplab"), ("torch ms", "torch baseline"), ("floor ms", "floor (x*2.0)")]
    width = 0.26
    for k, (column, label) in enumerate(columns):
        values = [float(r[column]) if r.get(column) else float("nan") for r in rows]
        ax.bar([i + (k - 1) * width for i in range(len(rows))], values, width, label=label)
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=9)
    ax.set_yscale("log")  # the recurrent row is 100x the others
    ax.set_ylabel("forward + backward, ms (log)")
    ax.set_title("Variants: droplab vs the same mask built from torch ops")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


MC_ROW = re.compile(r"^(head-only|every-layer)\s+(torch loop|torch replicate|droplab predict)\s+([\d.]+)\s")


def mc_rows(text: str) -> list[tuple[str, str, float]]:
    return [(m[1], m[2], float(m[3])) for m in map(MC_ROW.match, text.splitlines()) if m]


def plot_mc(rows: list[tuple[str, str, float]], path: Path) -> Path:
    plt = pyplot()
    models = list(dict.fromkeys(model for model, _, _ in rows))
    approaches = list(dict.fromkeys(approach for _, approach, _ in rows))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    width = 0.26
    for k, approach in enumerate(approaches):
        times = [next(t for m, a, t in rows if m == model and a == approach) for model in models]
        ax.bar([i + (k - 1) * width for i in range(len(models))], times, width, label=approach)
    ax.set_xticks(range(len(models)), [f"dropout {m}" for m in models])
    ax.set_ylabel("seconds for T=100 samples of 1,000 inputs")
    ax.set_title("Monte-Carlo inference: droplab.mc.predict vs torch")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


# ---- the compare report -----------------------------------------------------------------------------------------

def chromium() -> str | None:
    binary = next((c for c in CHROMIUM if os.path.exists(c)), None)
    return binary if binary and os.path.exists(CHROMEDRIVER) else None


def make_report(out: Path) -> list[Path]:
    binary = chromium()
    if binary is None:
        print("make_figures: compare-report.png skipped: headless Chromium and chromedriver are needed "
              "(apt-get install chromium chromium-driver)", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "droplab.cli", "compare", "--dataset", "digits", "--epochs", "6",
                   "--db", f"{work}/runs.db", "--report-dir", f"{work}/reports", "--no-progress"]
        subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL)
        page = next(Path(work, "reports").glob("*/index.html"))
        return [screenshot(binary, page, out / "compare-report.png", Path(work) / "profile")]


def screenshot(binary: str, page: Path, path: Path, profile: Path) -> Path:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
                 "--window-size=1200,1500", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    return path


# ---- main -------------------------------------------------------------------------------------------------------

# A figure is legible where the site shows it: Material's content column is about this wide in a 1280 px window, and
# a wider image is scaled down to it; no text may then be smaller than MIN_TEXT_PX (the site's own small print).
CONTENT_WIDTH_PX = 680
MIN_TEXT_PX = 10.0


def smallest_text_px(fig) -> float:
    """The height in screen pixels of the figure's smallest text, once the page scales it to the content column."""
    from matplotlib.text import Text

    width = fig.get_figwidth() * fig.dpi
    scale = min(1.0, CONTENT_WIDTH_PX / width)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=MIN_TEXT_PX * 72 / fig.dpi / scale) * fig.dpi / 72 * scale


def save(fig, path: Path) -> Path:
    smallest = smallest_text_px(fig)
    if smallest < MIN_TEXT_PX:
        raise SystemExit(f"make_figures: {path.name}: text {smallest:.1f} px high on the page "
                         f"(at least {MIN_TEXT_PX:g} px at {CONTENT_WIDTH_PX} px wide): enlarge the font or "
                         "shrink the figure")
    path.parent.mkdir(parents=True, exist_ok=True)
    # no timestamp or software tag: regenerating unchanged figures gives identical files
    fig.savefig(path, metadata={"Software": None})
    pyplot().close(fig)
    return path


MAKERS = {"masks": make_masks, "schedules": make_schedules, "benchmarks": make_benchmarks, "report": make_report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIGURES, help=f"output directory (default {FIGURES})")
    parser.add_argument("--only", action="append", choices=GROUPS, help="make only this group (repeatable)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for group in args.only or GROUPS:
        for path in MAKERS[group](args.out):
            print(path.relative_to(args.out) if path.is_relative_to(args.out) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
