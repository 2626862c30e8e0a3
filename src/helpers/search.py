"""Hyperparameter search: an Optuna study over any params keys, each trial a short training.fit.

`search.space` maps dotted params keys to Optuna distributions:

    search:
      space:
        tune.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
        tune.lora.r: {type: categorical, choices: [4, 8, 16]}

Samplers grid / random / TPE get the one seed; MedianPruner stops hopeless trials at an
evaluation. The study lives in the run folder (search.db, SQLite) unless search.storage names
another Optuna storage; several workers on one RDB storage share a study (search.study_name).
Writes tables/search-trials.csv, the history and importance figures, metrics["search"],
search-best.yaml (a full params file, no `extends`, that reruns the best trial) and, through
apply_best, the run's config.yaml: the later stages read the settings that trained model/final.

More workers on one study (make search-worker), each only running trials; stage 04 then
finds the study full and writes the report and search-best.yaml once:

    python -m helpers.search --run-dir reports/<run> [--storage postgresql://user@host/db]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from . import runs, schema, training
from .search_report import report
from .search_study import (WORKER_ENV, PruningCallback, _best_trial, _safe_url, open_study, parse_space, storage_url,
                    suggest, trial_score)
from .config import Config, ConfigError, apply_overrides, to_yaml
from .runs import Run

STAGE = "search"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks at the other workers' running trials


# ---------------------------------------------------------------- the space


# ---------------------------------------------------------------- the study


def objective(trial: optuna.Trial, run: Run, cfg: Config, space: dict[str, dict[str, Any]],
              train_rows: list[dict], val_rows: list[dict]) -> float:
    """Train one trial's config briefly in model/search/trial-N and return its score."""
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})  # fail_dead_workers reads it
    ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
             if t.number < trial.number]
    if len(ahead) >= cfg.search.n_trials:
        raise SurplusTrial(f"trial {trial.number}: {len(ahead)} trials before it already fill search.n_trials="
                           f"{cfg.search.n_trials} (another worker started one at the same moment)")
    params = suggest(trial, space)
    trial_cfg = apply_overrides(cfg, {**params, "search.enabled": False})
    out = run.model / "search" / f"trial-{trial.number}"
    print(f"trial {trial.number}: {params}", flush=True)
    try:
        fitted = training.fit(trial_cfg, train_rows, val_rows, out, resume=False,
                              callbacks=[PruningCallback(trial, cfg.search.metric)])
        history = fitted.trainer.state.log_history
        runs.write_json(out / "log_history.json", history)
        return trial_score(history, cfg.search.metric, cfg.search.direction)
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # trial models are not kept: disk


class SurplusTrial(Exception):
    """A trial started when the study was already full: failed at once, never trained."""


def _alive(pid: int) -> bool:
    """Whether a process of this machine is running (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that id: alive
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust os.kill


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Mark FAIL the running trials whose worker ran on this machine and is gone; returns their numbers."""
    # A worker on another machine cannot be checked this way: the heartbeat covers it.
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == host and worker.get("pid") != os.getpid() and not _alive(worker["pid"]):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            print(f"trial {t.number}: its worker (process {worker['pid']}) is gone; marked failed", flush=True)
            failed.append(t.number)
    return failed


def run_trials(run: Run, cfg: Config, study: optuna.Study, space: dict[str, dict[str, Any]],
               train_rows: list[dict], val_rows: list[dict]) -> int:
    """Run trials until the study holds search.n_trials finished ones (other workers' count); returns this one's."""
    # Optuna's MaxTrialsCallback counts finished trials only, after a trial: two workers that
    # each see n-1 both start one (n+1 trials), and a worker stops while another's last trial
    # may yet fail. So: start a trial only while finished + running < n, wait while other
    # workers' running trials could fill the study, and start again if one of them fails.
    n, ran, waiting = cfg.search.n_trials, 0, False
    while True:
        fail_dead_workers(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a worker elsewhere silent for 3 heartbeats (Optuna's check)
        if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
            return ran  # every grid point is taken: more trials would repeat one
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished, running = sum(s in FINISHED for s in states), states.count(TrialState.RUNNING)
        if finished >= n:
            return ran
        if finished + running >= n:
            if not waiting:
                print(f"{finished} of {n} trials finished, {running} running in other workers: waiting", flush=True)
            waiting = True
            time.sleep(POLL_SECONDS)
            continue
        waiting = False
        study.optimize(lambda trial: objective(trial, run, cfg, space, train_rows, val_rows), n_trials=1,
                       catch=(SurplusTrial,), gc_after_trial=True)
        ran += 1


def run_search(run: Run, cfg: Config) -> optuna.Study:
    """Run (or continue) the study to search.n_trials finished trials, then write its report."""
    space = parse_space(cfg)
    train_rows, val_rows = training.load_splits(run)
    if not val_rows:
        raise ConfigError("search: trials are scored on validation rows, and this run has none "
                          "(data.split.validation is 0)")
    study = open_study(run, cfg, space)
    if training.world_size() > 1:
        remaining = cfg.search.n_trials - sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
        if remaining > 0:
            raise ConfigError(
                f"search: {remaining} of search.n_trials={cfg.search.n_trials} trials are still to run, and under "
                f"accelerate launch every process would start trials of its own. Run them first, in one "
                f"process or several workers (make search-worker RUN={run.dir}), then launch again: the "
                f"processes read the finished study and train its best settings")
    else:
        run_trials(run, cfg, study, space, train_rows, val_rows)
    if training.is_main_process():  # under accelerate launch, one process writes
        report(run, cfg, study)
    return study


# ---------------------------------------------------------------- the report


def best_config(cfg: Config, study: optuna.Study) -> Config:
    """The config with the best trial's values and search off: what model/final is then trained with."""
    best = _best_trial(study)
    if best is None:
        raise ConfigError(f"search: no trial of study {study.study_name!r} finished; see the trials table "
                          f"(all pruned or failed?) and widen search.space or raise tune.max_steps")
    return apply_overrides(cfg, {**best.params, "search.enabled": False})


def write_best(run: Run, best: Config) -> Path:
    """search-best.yaml: every key spelled out, no `extends`, so it reruns the best trial anywhere."""
    path = run.dir / "search-best.yaml"
    # Its own experiment name, so `make pipeline EXP=...search-best.yaml` starts runs of its own.
    rerun = apply_overrides(best, {"experiment.name": f"{best.experiment.name.removesuffix('-best')}-best"})
    header = (f"# The best trial of the search in {run.dir.name}: every key spelled out (no extends).\n"
              f"# Run: make pipeline EXP={path}\n")
    runs.write_text(path, header + to_yaml(rerun))
    return path


def apply_best(run: Run, cfg: Config, study: optuna.Study) -> Config:
    """The best trial's config, written as search-best.yaml and as the run's config.yaml; 04 trains with it."""
    best = best_config(cfg, study)
    if training.is_main_process():  # under accelerate launch, one process writes
        write_best(run, best)
        # config.yaml says what ran: stages 05 and 06 (and a rerun of 04) read it. It keeps the
        # run's experiment name, so a rerun with --search joins this study rather than a new one.
        runs.write_text(run.config_file, to_yaml(best))
    return best


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m helpers.search --run-dir DIR [--storage URL] [--set key=value ...]`: one more worker."""
    parser = argparse.ArgumentParser(prog="python -m helpers.search", description=(
        "Run trials of a run's search study until it holds search.n_trials finished ones, then exit. Start "
        "several (on several machines, with a shared storage); stage 04 of the run then writes the report "
        "and search-best.yaml once, and trains the best settings."))
    parser.add_argument("--run-dir", required=True, help="run folder with stages 01-03 done (reports/<run>)")
    parser.add_argument("--storage", help="Optuna storage URL shared by the workers, e.g. postgresql://user@host/db "
                                          "(default: search.storage of the run, else its search.db)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key for this worker, e.g. --set search.n_trials=16 (repeatable)")
    args = parser.parse_args(argv)
    # A worker's draws mix in its name, so workers started together do not draw the same trials.
    worker = os.environ.setdefault(WORKER_ENV, f"{socket.gethostname()}:{os.getpid()}")
    try:
        run, cfg = runs.open_run(args.run_dir)
        cfg = apply_overrides(cfg, args.set)
        if args.storage:
            cfg = apply_overrides(cfg, {"search.storage": args.storage})
        space = parse_space(cfg)
        train_rows, val_rows = training.load_splits(run)
        if not val_rows:
            raise ConfigError("search: trials are scored on validation rows, and this run has none")
        study = open_study(run, cfg, space)
        ran = run_trials(run, cfg, study, space, train_rows, val_rows)
    except (ConfigError, schema.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    states = [t.state for t in study.get_trials(deepcopy=False)]
    print(f"worker {worker}: ran {ran} trial(s); study {study.study_name!r} in {_safe_url(storage_url(run, cfg))} "
          f"holds {sum(s in FINISHED for s in states)} finished of search.n_trials={cfg.search.n_trials} "
          f"({states.count(TrialState.FAIL)} failed). Stage 04 of {run.dir} writes search-best.yaml and trains "
          f"the best settings.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
