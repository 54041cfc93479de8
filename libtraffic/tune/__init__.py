"""Everything about tuning, and the only package that imports Ray.

    driver.py      hyper_parameter(): options, experiment claim and resume, data shared once, Tuner, end
    options.py     TuneOptions, the one definition of hyper_tune.py's own flags and defaults (no Ray)
    context.py     TuneRun, what one tuning run works with (config, space, options, storage, data, logger)
    spaces.py      space files: one row per entry type (checks, Ray sampler, Optuna suggestion, corners)
    searchers.py   --search_alg and --scheduler tables
    trial.py       the function trainable each trial runs
    records.py     Ray's results -> TrialRecord (schema and files: libtraffic.results)
    finish.py      the end of a search: tables, best model and config, test metrics, report
    final_runs.py  --final_seeds: the best configurations retrained on Ray actors
    dry_run.py     --dry_run: every corner of the space built, nothing trained
    settings.py    the experiment's settings, stored and compared on --resume
    session.py     joining Ray or starting a private instance; resources; storage
    interrupt.py   Ctrl-C and SIGTERM at any moment
    signing.py     HMAC signatures of the Ray state files a resume unpickles
    watchdog.py    ends a killed driver's private Ray processes
    ray_private.py the few Ray behaviours outside its public API we rely on, and why

``hyper_parameter`` is imported on first use, so that ``libtraffic.tune.options`` (hyper_tune.py's
flags) loads without Ray or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hyper_parameter"]


def __getattr__(name: str) -> Any:
    if name != "hyper_parameter":
        raise AttributeError(f"module 'libtraffic.tune' has no attribute {name!r}")
    from libtraffic.tune.driver import hyper_parameter

    return hyper_parameter
