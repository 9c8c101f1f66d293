"""The lab: experiments on real data, a run store, reports and benchmarks (the ``droplab`` commands).

Heavy dependencies (matplotlib, optuna, rich, scikit-learn) are imported inside the functions that
need them and ask for the ``droplab[lab]`` extra when missing.
"""
