"""The module contract over droplab's core modules."""

import droplab.nn as dnn
from contract import Case, install

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
