import pytest

from droplab.diagnostics.verdict import OUTCOMES, three_run_verdict


def run(train, val, best=None, label=""):
    return {"train_acc": train, "val_acc": val, "best_val_acc": best if best is not None else val, "label": label}


def test_helps_when_gap_shrinks_and_validation_improves():
    v = three_run_verdict(run(1.0, 0.65, label="p=0"), run(0.93, 0.72, label="p=0.5"), run(0.99, 0.69))
    assert v.outcome == "helps" and "shrinks the generalization gap" in v.headline
    assert v.recommended == "p=0.5" and any("35.0" in r or "0.350" in r for r in v.reasons)


def test_regularizes_without_gain():
    assert three_run_verdict(run(1.0, 0.70), run(0.90, 0.705)).outcome == "regularizes"


def test_too_aggressive_when_training_collapses_without_gain():
    v = three_run_verdict(run(1.0, 0.70), run(0.55, 0.52), run(0.85, 0.71))
    assert v.outcome == "too_aggressive" and "underfitting" in v.headline and "reduced rate" in v.headline


def test_reduce_rate_when_the_reduced_run_wins():
    assert three_run_verdict(run(1.0, 0.65), run(0.95, 0.68), run(0.98, 0.72)).outcome == "reduce_rate"


def test_no_overfitting_to_fix():
    assert three_run_verdict(run(0.80, 0.79), run(0.78, 0.785)).outcome == "no_overfitting"


def test_hurts():
    assert three_run_verdict(run(1.0, 0.70), run(0.97, 0.62)).outcome == "hurts"


def test_uses_best_val_only_when_every_run_has_it():
    b, i = run(1.0, 0.65, best=0.70), {"train_acc": 0.9, "val_acc": 0.72}
    v = three_run_verdict(b, i)
    assert "validation accuracy: 0.650" in v.reasons[1]  # falls back to final val acc for both
    assert v.outcome in OUTCOMES


def test_missing_keys_are_named():
    with pytest.raises(ValueError, match="the intended summary needs 'train_acc'"):
        three_run_verdict(run(1.0, 0.6), {"val_acc": 0.7})
