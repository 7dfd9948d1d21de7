"""The product layer: the ``asr-distill`` commands and what only they use.

- :mod:`~common.app.cli`         the ``asr-distill`` entry point (subcommands)
- :mod:`~common.app.experiment`  a config's method -> its typed config and ``fit`` (through :mod:`common.registry`)
- :mod:`~common.app.demo`        ``make demo``: both methods end to end, one function per stage
- :mod:`~common.app.sweep`       ablation sweeps, here or on SLURM
- :mod:`~common.app.table`       paper-shaped tables with bootstrap intervals, paired comparisons

Nothing outside ``common/app/`` imports it (tests, benchmarks and notebooks may): the library below it - data,
metrics, teachers, losses, training - knows no command (``tests/test_layering.py``).
"""
