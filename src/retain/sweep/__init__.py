"""``retain sweep``: a grid or multi-objective Optuna search over retain configs.

A sweep file names a base config and the settings to vary; every trial is a full guarded
``retain train`` in its own run directory, scored on task accuracy (maximised) and
forgetting (minimised). The outputs are the Pareto-optimal trials, a table of all trials
and a recommended config for ``retain train``. See docs/SWEEP.md.

Typical use::

    sweep = load_sweep("sweep.yaml")
    outcome = run_sweep(sweep)
    print(outcome.results.recommended)
"""

from retain.sweep.loading import load_sweep
from retain.sweep.results import SweepResults, TrialRecord
from retain.sweep.spec import Axis, Sweep
from retain.sweep.study import SweepOutcome, run_sweep

__all__ = ["Axis", "Sweep", "SweepOutcome", "SweepResults", "TrialRecord", "load_sweep", "run_sweep"]
