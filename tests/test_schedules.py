"""Rate schedules (values equal their formulas) and DropoutScheduler (groups, resume, warning, compile)."""

import math
import warnings

import pytest
import torch
from torch import nn

import droplab
import droplab.nn as dnn
from droplab import schedules as S


@pytest.mark.parametrize("t", [0, 1, 37, 250, 999, 1000, 5000])
def test_schedule_values_equal_their_formulas(t):
    assert S.constant(0.3)(t) == 0.3
    assert S.linear(0.1, 0.5, 1000)(t) == pytest.approx(0.1 + 0.4 * min(t / 1000, 1), abs=1e-15)
    assert S.linear(0.5, 0.0, 100, delay=200)(t) == pytest.approx(0.5 - 0.5 * min(max(t - 200, 0) / 100, 1),
                                                                  abs=1e-15)
    assert S.cosine(0.5, 0.1, 1000)(t) == pytest.approx(0.1 + 0.4 * (1 + math.cos(math.pi * min(t / 1000, 1))) / 2,
                                                        abs=1e-15)
    assert S.stepwise([0.1, 0.3, 0.0], [37, 1000])(t) == (0.1 if t < 37 else 0.3 if t < 1000 else 0.0)
    phase = (t % 100) / 100
    assert S.cyclical(0.1, 0.5, 100)(t) == pytest.approx(0.1 + 0.4 * (1 - abs(2 * phase - 1)), abs=1e-15)
    # Morerio et al.: keep rate q(t) = (1 - q_min) e^{-gamma t} + q_min with q_min = 1 - p_final
    q_min, gamma = 0.6, 1e-3
    assert S.curriculum(1 - q_min, gamma)(t) == pytest.approx(1 - ((1 - q_min) * math.exp(-gamma * t) + q_min),
                                                              abs=1e-15)
    assert S.early(0.2, 250)(t) == (0.2 if t < 250 else 0.0)
    assert S.early(0.2, 250, mode="linear")(t) == pytest.approx(0.2 * (1 - t / 250) if t < 250 else 0.0, abs=1e-15)


def test_schedule_landmarks():
    assert S.cyclical(0.1, 0.5, 100)(50) == pytest.approx(0.5)
    assert S.curriculum(0.4, 0.01)(0) == 0.0 and S.curriculum(0.4, 0.01)(10_000) == pytest.approx(0.4)
    assert S.cosine(0.5, 0.1, 10)(5) == pytest.approx(0.3)


def test_schedule_arguments_are_validated():
    with pytest.raises(ValueError, match=r"start \(a dropout probability\) has to be between 0 and 1, but got 1.5"):
        S.linear(1.5, 0.0, 10)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        S.cosine(0.1, 0.2, 0)
    with pytest.raises(ValueError, match="one more rate than milestones"):
        S.stepwise([0.1, 0.2], [5, 10])
    with pytest.raises(ValueError, match="strictly increasing"):
        S.stepwise([0.1, 0.2, 0.3], [10, 5])
    with pytest.raises(ValueError, match="gamma must be a positive"):
        S.curriculum(0.5, -1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        S.early(0.1, 10, mode="cosine")
    with pytest.raises(ValueError, match="t must be a non-negative int"):
        S.constant(0.1)(-1)


def _model():
    # a torch site, a droplab site, a non-site, and a learned rate
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), dnn.Dropout(0.0, seed=0), nn.Identity(),
                         dnn.ConcreteDropout(nn.Linear(4, 4), 0.2, seed=2))


def test_scheduler_drives_every_site_except_learned_rates():
    model = _model()
    sched = droplab.DropoutScheduler(model, S.linear(0.0, 0.5, 10))
    assert sched.site_names == ["1", "2"]
    for _ in range(4):
        rates = sched.step()
    assert rates == {"1": pytest.approx(0.2), "2": pytest.approx(0.2)}
    assert model[1].p == pytest.approx(0.2) and model[2].p == pytest.approx(0.2)
    assert model[4].p == pytest.approx(0.2, rel=1e-6)  # learned, untouched


def test_scheduler_groups_have_their_own_schedules():
    model = nn.Sequential(dnn.TransformerBlock(8, 2, seed=0), dnn.TransformerBlock(8, 2, seed=4))
    sched = droplab.DropoutScheduler(model, {"*": S.constant(0.1), "*.attn_drop": S.linear(0.0, 0.3, 3),
                                             "1": S.early(0.2, 2)}, unit="epoch")
    sched.step()
    rates = {s.name: s.p for s in droplab.sites(model)}
    assert rates["0.self_attn.attn_drop"] == pytest.approx(0.1) and rates["0.ffn_drop"] == 0.1
    assert rates["1.self_attn.attn_drop"] == 0.2 and rates["1.ffn_drop"] == 0.2  # "1" is the last match
    sched.step()
    assert model[1].ffn_drop.p == 0.0
    with pytest.raises(ValueError, match=r"pattern\(s\) \['2'\] match no dropout site"):
        droplab.DropoutScheduler(model, {"2": S.constant(0.1)})


def test_resumed_scheduler_continues_the_same_sequence():
    schedule = {"1": S.cyclical(0.0, 0.4, 6), "2": S.curriculum(0.5, 0.2)}
    straight_model = _model()
    straight = droplab.DropoutScheduler(straight_model, schedule)
    expected = [straight.step() for _ in range(12)]

    first_model = _model()
    first = droplab.DropoutScheduler(first_model, schedule)
    for _ in range(5):
        first.step()
    state = first.state_dict()
    resumed_model = _model()
    resumed = droplab.DropoutScheduler(resumed_model, schedule)
    resumed.load_state_dict(state)
    assert resumed.t == 5 and resumed_model[1].p == first_model[1].p
    assert [resumed.step() for _ in range(7)] == expected[5:]
    with pytest.raises(ValueError, match="unit='step'"):
        droplab.DropoutScheduler(_model(), schedule, unit="epoch").load_state_dict(state)
    with pytest.warns(UserWarning, match="other rates"):
        droplab.DropoutScheduler(_model(), S.constant(0.1)).load_state_dict(state)


def test_abrupt_late_rise_warns_once_and_ramps_do_not():
    model = _model()
    sched = droplab.DropoutScheduler(model, S.stepwise([0.0, 0.5], [20]), late_after=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(19):
            sched.step()
    with pytest.warns(UserWarning, match=r"raised abruptly late in training \(step 20\): 1: 0 -> 0.5"):
        sched.step()
    early_jump = droplab.DropoutScheduler(_model(), S.stepwise([0.0, 0.5], [5]), late_after=10)
    ramp = droplab.DropoutScheduler(_model(), S.linear(0.0, 0.5, 10, delay=20), late_after=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(40):  # a jump before late_after, and a late rise of 0.05 per step: no warning
            early_jump.step()
            ramp.step()


def test_scheduler_resolution_and_bad_rates():
    model = _model()
    sched = droplab.DropoutScheduler(model, S.cosine(0.0, 0.5, 7), resolution=0.05)
    for _ in range(3):
        sched.step()
        assert round(model[1].p / 0.05, 9) == round(model[1].p / 0.05)
    gaussian = nn.Sequential(dnn.Dropout(0.1, seed=0), dnn.GaussianDropout(0.1, seed=1))
    sched = droplab.DropoutScheduler(gaussian, S.stepwise([0.1, 1.0], [1]))
    with pytest.raises(ValueError, match="Gaussian dropout needs p < 1"):
        sched.step()
    assert sched.t == 0 and gaussian[0].p == 0.1  # nothing changed


def _compiled_rate_change(backend: str) -> None:
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(6, 6), dnn.Dropout(0.0, seed=0), nn.Dropout(0.0)).train()
    compiled = torch.compile(model, backend=backend)
    sched = droplab.DropoutScheduler(model, S.stepwise([0.0, 1.0, 0.0], [1, 2]))
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model[0](x))  # p = 0: the identity after the linear layer
        sched.step()  # p -> 1 takes effect at the next compiled forward: everything dropped
        assert torch.count_nonzero(compiled(x)) == 0
        sched.step()
        torch.testing.assert_close(compiled(x), model[0](x))


def test_rate_change_takes_effect_under_torch_compile():
    # Dynamo guards on the Python float p and recompiles; aot_eager keeps the test fast on CPU
    _compiled_rate_change("aot_eager")


@pytest.mark.slow
def test_rate_change_takes_effect_under_inductor():
    _compiled_rate_change("inductor")
