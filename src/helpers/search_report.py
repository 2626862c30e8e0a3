"""What a search leaves for the reader: the trials table, Optuna's history and importance plots,
metrics["search"] (helpers.search calls `report` once the study is full).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from . import artifacts, plots, runs
from .config import Config
from .runs import Run
from .search_study import _best_trial, _safe_url, storage_url

STAGE = "search"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, score, seconds, and the searched values."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds().round(1)
    return df.rename(columns=lambda c: c.removeprefix("params_")).rename(columns={"duration": "seconds"})


def history_figure(study: optuna.Study, metric: str):
    """Optuna's history plot (each finished trial and the best so far), pruned trials at their last report."""
    with _optuna_plot():
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [list(t.intermediate_values.values())[-1] for t in pruned],
                   marker="x", color="C3", label="pruned (last reported value)", zorder=3)
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    return ax.figure


def importance_figure(study: optuna.Study, seed: int = 0):
    """Optuna's importance plot (fANOVA), or None below two finished trials or where fANOVA cannot rank."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(done) < 2 or not study.best_params:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError):  # e.g. every trial drew the same values
        return None
    with _optuna_plot():
        return optuna.visualization.matplotlib.plot_param_importances(study, evaluator=evaluator).figure


@contextmanager
def _optuna_plot():
    """Around Optuna's plots: its ggplot style stays inside, its 'experimental' warning is not shown."""
    with plots.plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def report(run: Run, cfg: Config, study: optuna.Study) -> dict[str, Any]:
    """Trials table, history and importance figures, metrics["search"]."""
    table = trials_table(study)
    artifacts.table(run, STAGE, "trials", table, f"Every trial of the search, scored by {cfg.search.metric} "
                    f"({cfg.search.direction}); pruned trials were stopped at an evaluation.")
    fig = history_figure(study, cfg.search.metric)
    artifacts.figure(run, STAGE, "history", fig,
                     "Each trial's score and the best so far: a flat line means more trials found nothing better.")
    plots.plt.close(fig)
    fig = importance_figure(study, cfg.experiment.seed)
    if fig is not None:
        artifacts.figure(run, STAGE, "importance", fig, "Importance of each searched key (fANOVA); with few "
                         "trials this is a hint, not a finding.")
        plots.plt.close(fig)
    states = [t.state for t in study.trials]
    best = _best_trial(study)
    return runs.record_metrics(run, STAGE, {
        "trials": len(states), "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED), "failed": states.count(TrialState.FAIL),
        "metric": cfg.search.metric, "direction": cfg.search.direction, "sampler": cfg.search.sampler,
        "best_trial": best.number if best else None, "best_value": best.value if best else None,
        "best_params": best.params if best else None, "storage": _safe_url(storage_url(run, cfg)),
        "study_name": study.study_name})
