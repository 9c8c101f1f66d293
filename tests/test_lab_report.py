import html
import re

from droplab.lab.report import format_table, write_report


def fake_run(label, acc):
    history = [{"epoch": e, "train_acc": min(1.0, acc + 0.05 * e), "val_acc": acc, "train_loss": 1.0 / e,
                "val_loss": 1.0, "gap": min(1.0, acc + 0.05 * e) - acc} for e in range(1, 4)]
    return {"label": label, "history": history, "train_acc": 0.9, "val_acc": acc, "best_val_acc": acc,
            "test_acc": acc, "train_loss": 0.3, "val_loss": 1.0, "best_val_loss": 0.9, "best_train_acc": 0.9,
            "best_train_loss": 0.3, "gap": 0.9 - acc, "ece": 0.05, "best_epoch": 2, "wall_time_s": 1.5,
            "reliability": {"confidence": [0.3, 0.7, 0.0], "accuracy": [0.25, 0.75, 0.0], "count": [3, 5, 0]}}


EVIL = '<script>alert("x")</script>&'


def test_report_escapes_user_strings_and_links_its_pngs(tmp_path):
    verdict = {"headline": f"verdict {EVIL}", "reasons": [EVIL], "recommended": EVIL}
    path = write_report(tmp_path / "r", [fake_run(EVIL, 0.6), fake_run("p=0.5", 0.7)], title=f"title {EVIL}",
                        verdict=verdict, config={"dataset": f"/data/{EVIL}.csv"})
    text = path.read_text()
    assert "<script>" not in text and html.escape(EVIL) in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(images) == ["curves.png", "gap.png", "reliability.png"]
    for name in images:
        assert (tmp_path / "r" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in text  # self-contained: nothing loaded from the network


def test_plain_table_has_every_column():
    table = format_table([fake_run("p=0", 0.6)])
    header = table.splitlines()[0]
    for title in ("train acc", "best val acc", "val loss", "gap", "ECE", "epochs to best", "wall s"):
        assert title in header
    assert "0.600" in table.splitlines()[2]


def test_one_report_module_and_no_sweep_cycle():
    """sweep_report draws through the report module and never imports sweep (sweep imports it)."""
    import ast
    import inspect

    from droplab.lab import sweep_report, uncertainty

    for module in (sweep_report, uncertainty):
        imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert "sweep" not in imported and "report" in imported and "metrics" not in imported


def test_html_and_mathtext_escaping():
    from droplab.lab.report import escape, mpl_text, page

    html = page("<script>x</script>", [f"<p>{escape('a & <b>')}</p>"])
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &amp; &lt;b&gt;" in html
    assert mpl_text("$\\x{$") == "\\$\\x{\\$"
