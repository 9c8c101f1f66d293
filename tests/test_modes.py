"""training_flags_restored: the one helper every temporary train/eval change goes through."""

import pytest
from torch import nn

from droplab._modes import training_flags_restored


def test_mixed_flags_come_back_exactly_even_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(2)))
    model[1][1].eval()  # mixed modes: a plain model.train() afterwards would not restore them
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), training_flags_restored(model.modules()):
        model.eval()
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
    with training_flags_restored(model.modules()):
        model.train()
    assert [m.training for m in model.modules()] == before
