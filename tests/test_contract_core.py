"""The module contract over droplab's core modules, and the contract's checks failing where they should."""

import pytest
import torch
from torch import nn

import droplab as dl
import droplab.nn as dnn
from contract import Case, check_channels_last, check_compile_fullgraph, check_saves_no_mask, install

CASES = [
    Case("Dropout", lambda p, s: dnn.Dropout(p, seed=s), (6, 7), repr_args=("p", "inplace", "noise_shape", "seed",
                                                                            "scaling")),
    Case("Dropout-classic", lambda p, s: dnn.Dropout(p, seed=s, scaling="classic"), (5, 9), eval_rule="scale",
         repr_args=("p", "scaling")),
    Case("Dropout-noise-shape", lambda p, s: dnn.Dropout(p, seed=s, noise_shape=(None, 1, None)), (4, 3, 5)),
    Case("Dropout1d", lambda p, s: dnn.Dropout1d(p, seed=s), (3, 4, 5), expectation_steps=800),
    Case("Dropout2d", lambda p, s: dnn.Dropout2d(p, seed=s), (3, 4, 2, 3), expectation_steps=800),
    Case("Dropout3d", lambda p, s: dnn.Dropout3d(p, seed=s), (2, 3, 2, 2, 2), expectation_steps=800),
    Case("Dropout2d-classic", lambda p, s: dnn.Dropout2d(p, seed=s, scaling="classic"), (2, 4, 3, 3),
         eval_rule="scale", expectation_steps=800),
]

install(globals(), CASES)


# The contract's checks can fail: each catches a dropout written the way torch users compose it.

class _ComposedDropout(nn.Dropout):
    """Dropout as ``x * bernoulli_mask / q`` written into a fresh (contiguous) tensor, as a kernel
    would: it saves its float mask and loses the input's layout."""

    def forward(self, x):
        if not self.training:
            return x
        g = torch.Generator().manual_seed(0)  # the same mask every call, so only layout and saving differ
        mask = torch.empty(x.shape).bernoulli_(1 - self.p, generator=g) / (1 - self.p)
        return torch.empty(x.shape).copy_(x * mask)


def test_the_contract_catches_a_saved_mask_and_a_lost_layout():
    case = Case("composed", lambda p, s: _ComposedDropout(p), (2, 3, 4, 5))
    with pytest.raises(AssertionError, match="a mask is saved for backward"):
        check_saves_no_mask(case)
    with pytest.raises(AssertionError, match="strides"):
        check_channels_last(case)


class _PythonCounter(dnn.Dropout):
    """A dropout counting its steps in a Python int: dynamo guards on the int and recompiles every step."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return dl.functional.dropout(x, self.p, self.training, seed=int(self.seed), step=self.calls)


def test_the_contract_catches_a_recompile_per_step():
    case = Case("python-counter", lambda p, s: _PythonCounter(p, seed=s), (4, 6))
    with pytest.raises(AssertionError, match="compiled 2 times in two steps"):
        check_compile_fullgraph(case)
