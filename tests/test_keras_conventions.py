"""Keras' noise_shape convention, the argument-type messages, and torch's input-rank rules in evaluation.

References: torch's own modules (the rank rules), a hand-built Keras noise-shape mask (a mask of the
noise shape broadcast over the input), and the formulas of alpha dropout.
"""

import warnings

import pytest
import torch

import droplab.functional as F
import droplab.nn as dnn
from droplab.functional.noise import ALPHA_PRIME, alpha_dropout_coefficients

NOISE_SHAPED = [
    ("Dropout", lambda **kw: dnn.Dropout(0.5, **kw)),
    ("GaussianDropout", lambda **kw: dnn.GaussianDropout(0.5, **kw)),
    ("AlphaDropout", lambda **kw: dnn.AlphaDropout(0.5, **kw)),
    ("ConcreteDropout", lambda **kw: dnn.ConcreteDropout(torch.nn.Linear(3, 3), 0.5, **kw)),
]


@pytest.mark.parametrize("name,make", NOISE_SHAPED, ids=[n for n, _ in NOISE_SHAPED])
def test_noise_shape_is_checked_at_construction(name, make):
    with pytest.raises(TypeError, match=r"noise_shape must be None or a sequence .* but got int 5"):
        make(noise_shape=5)  # was "'int' object is not iterable", or nothing until the first forward
    with pytest.raises(ValueError, match=r"noise_shape must be None or a sequence"):
        make(noise_shape="abc")  # a string is a sequence, but not of sizes
    for bad in [(None, 0.5), (None, -2), (True, None), (None, "1")]:
        with pytest.raises(ValueError, match=r"noise_shape entries must be None or -1 \(the input's size along that "
                                             r"axis\), 1 \(one mask value shared along it\) or the size, but axis"):
            make(noise_shape=bad)
    assert make(noise_shape=[None, 1]).noise_shape == (None, 1)  # a list is kept as a tuple
    assert "noise_shape=(None, 1)" in repr(make(noise_shape=(None, 1)))


def test_a_size_that_does_not_match_the_input_is_caught_at_forward_with_the_same_rule():
    m = dnn.Dropout(0.5, noise_shape=(None, 4))  # legal at construction: 4 may be the input's size
    m(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"noise_shape entries must be None or -1 .* axis 1 has size 5 but noise_shape "
                                         r"gives 4"):
        m(torch.ones(2, 5))


def test_minus_one_means_the_input_size_as_in_tensor_expand():
    x = torch.randn(3, 5, 4)
    for noise_shape in [(-1, 1, -1), (None, 1, None), (3, 1, 4)]:
        torch.testing.assert_close(F.dropout(x, 0.5, seed=2, noise_shape=noise_shape),
                                   F.dropout(x, 0.5, seed=2, noise_shape=(None, 1, None)), rtol=0, atol=0)
    assert torch.ones(3, 1, 4).expand(-1, 5, -1).shape == x.shape  # the convention it follows
    m = dnn.Dropout(0.5, seed=1, noise_shape=(-1, 1, -1))
    y = m(torch.ones(3, 5, 4))
    assert torch.equal(y, y[:, :1].expand_as(y))  # shared along axis 1 only


def test_alpha_dropout_noise_shape_is_keras_alpha_dropout():
    x = torch.randn(6, 8, dtype=torch.float64)
    m = dnn.AlphaDropout(0.3, seed=4, noise_shape=(None, 1))
    y = m(x)
    # a hand-built Keras mask: one Bernoulli value per row (the keep mask of the same seed and step)
    keep = (F.dropout(torch.ones(6, 1, dtype=torch.float64), 0.3, seed=4, step=0) != 0).to(x.dtype)
    a, b = alpha_dropout_coefficients(0.3)
    torch.testing.assert_close(y, a * (x * keep + ALPHA_PRIME * (1 - keep)) + b)
    assert 0 < keep.sum() < 6
    assert torch.equal(m.eval()(x), x)
    with pytest.raises(ValueError, match="noise_shape must have one entry per input dimension"):
        m.train()(torch.randn(6, 8, 2))


def test_the_rate_type_message_names_the_type_expected_and_received():
    x = torch.ones(3)
    with pytest.raises(TypeError, match=r"dropout probability must be a float \(or int\) between 0 and 1, but got "
                                        r"str '0.5'"):
        F.dropout(x, "0.5")  # was "has to be between 0 and 1, but got 0.5"
    with pytest.raises(ValueError, match="but got NoneType None"):  # still a ValueError for older handlers
        dnn.Dropout(None)
    with pytest.raises(TypeError, match="but got bool True"):
        F.dropout(x, True)
    assert F.check_probability(torch.tensor(0.25)) == 0.25 and F.check_probability(1) == 1.0


RANK_RULES = [("Dropout2d", (0, 1, 2, 3, 4, 5)), ("Dropout3d", (0, 1, 2, 3, 4, 5)),
              ("FeatureAlphaDropout", (0, 1, 2, 3, 4, 5)), ("AlphaDropout", (0, 1, 2, 3)), ("Dropout1d", (2, 3))]


@pytest.mark.parametrize("name,ranks", RANK_RULES, ids=[n for n, _ in RANK_RULES])
def test_evaluation_passes_every_rank_torch_passes(name, ranks):
    for rank in range(6):
        x = torch.randn((3,) * rank)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_ok = _returns(getattr(torch.nn, name)(0.5).eval(), x)
            ours = _returns(getattr(dnn, name)(0.5).eval(), x)
        assert ours == torch_ok, f"{name} eval, rank {rank}: torch {torch_ok}, droplab {ours}"
        assert torch_ok == "identity" or rank not in ranks


@pytest.mark.parametrize("fn", ["dropout2d", "dropout3d", "feature_alpha_dropout"])
def test_training_raises_where_torch_draws_a_feature_mask(fn):
    for rank in (0, 1):
        for p, raises in [(0.5, rank == 0 or fn != "dropout3d"), (0.0, False), (1.0, False)]:
            x = torch.randn((3,) * rank)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_result = _returns(lambda t, p=p: getattr(torch.nn.functional, fn)(t, p, True), x)
                ours = _returns(lambda t, p=p: getattr(F, fn)(t, p, True), x)
            assert (torch_result == "RuntimeError") == raises
            assert (ours == "RuntimeError") == raises, (fn, rank, p, ours)


def _returns(call, x) -> str:
    try:
        y = call(x)
    except RuntimeError:
        return "RuntimeError"
    return "identity" if torch.equal(y, x) else "changed"
