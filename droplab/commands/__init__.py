"""The ``droplab`` commands: one module per command, each a thin layer over an engine.

Every module here exposes ``configure(parser)`` (its arguments) and ``run(args) -> int`` (parse what
the user gave, call the engine, print); :mod:`droplab.cli` imports only the module of the command
that runs. The work itself lives in engine modules named for what they do:

=============  ==========================================================================
command        engine
=============  ==========================================================================
compare        :mod:`droplab.lab.comparison` (the Python API ``droplab.lab.compare``)
runs           :mod:`droplab.lab.listing` over :mod:`droplab.lab.store`
sweep          :mod:`droplab.lab.sweep` and :mod:`droplab.lab.sweep_report`
inspect        :mod:`droplab.lab.inspection`
uncertainty    :mod:`droplab.lab.uncertainty`
bench          :mod:`droplab.bench` (one module per suite)
study          :mod:`droplab.study`
=============  ==========================================================================

:mod:`droplab.commands.arguments` holds the arguments several commands share (``--model``,
``--dataset``, ``--config``, ``--set``). Errors take one path, in :mod:`droplab.cli`.
"""
