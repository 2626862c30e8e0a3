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
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState
from transformers import TrainerCallback

from . import artifacts, plots, runs, schema, training
from .config import Config, ConfigError, apply_overrides, to_yaml
from .runs import Run

STAGE = "search"
WORKER_ENV = "TUNEBOOK_SEARCH_WORKER"  # a worker's name in a parallel search: makes its draws repeatable
SPEC_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks at the other workers' running trials


# ---------------------------------------------------------------- the space

def parse_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """search.space checked key by key: a known type, its fields, and values the params accept."""
    if not cfg.search.space:
        raise ConfigError("search.space: empty; name at least one params key to search, e.g. "
                          "tune.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    space = {}
    for key, spec in cfg.search.space.items():
        where = f"search.space.{key}"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in SPEC_KEYS:
            raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
        extra = set(spec) - SPEC_KEYS[kind] - {"type"}
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {sorted(extra)} for type {kind} "
                              f"(known: {sorted(SPEC_KEYS[kind])})")
        values = _check_values(where, kind, spec)
        for value in values:  # every end of the range must be a valid value of the key
            try:
                apply_overrides(cfg, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{where}: {value!r} is not usable there:\n{e}") from None
        space[key] = dict(spec)
    return space


def _check_values(where: str, kind: str, spec: dict) -> list:
    """The values a spec can produce at its ends (range) or in full (choices); bad specs raise."""
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list `choices`")
        if any(c is not None and not isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null (Optuna stores them)")
        return choices
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {kind} needs `low` and `high`")
    low, high = spec["low"], spec["high"]
    number = int if kind == "int" else (int, float)
    if not isinstance(low, number) or not isinstance(high, number) or isinstance(low, bool) or low > high:
        raise ConfigError(f"{where}: needs {kind} low <= high, got low={low!r} high={high!r}")
    if spec.get("log") and (spec.get("step") is not None or low <= 0):
        raise ConfigError(f"{where}: log scale needs low > 0 and no step")
    return [low, high]


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per searched key, drawn by the trial's sampler."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step") or 1,
                                            log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                              log=bool(spec.get("log")))
    return params


def grid(space: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Every value of each key, for the grid sampler: choices, or a range walked by its step."""
    out = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = spec["choices"]
        elif spec.get("step") is None and spec["type"] == "float":
            raise ConfigError(f"search.space.{key}: the grid sampler needs `choices` or a `step` for a float range")
        else:
            step = spec.get("step") or 1
            n = int(round((spec["high"] - spec["low"]) / step)) + 1
            out[key] = [spec["low"] + i * step for i in range(n)]
    return out


# ---------------------------------------------------------------- the study

def sampler(cfg: Config, space: dict[str, dict[str, Any]], seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded."""
    kind = cfg.search.sampler
    if kind == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(cfg: Config) -> optuna.pruners.BasePruner:
    """MedianPruner once two trials finished, never at a trial's first evaluation (too early to judge)."""
    if not cfg.search.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.tune.eval_steps + 1)


def storage_url(run: Run, cfg: Config) -> str:
    """search.storage (postgresql:// read as psycopg 3, the driver we pin), else an SQLite file in the run folder."""
    url = cfg.search.storage or f"sqlite:///{(run.dir / 'search.db').resolve()}"
    for plain in ("postgresql://", "postgres://"):  # SQLAlchemy's default would be psycopg2
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def storage(run: Run, cfg: Config) -> optuna.storages.BaseStorage | str:
    """The study's storage: an RDB one with heartbeats (so a killed worker's trial is failed), else the URL."""
    url = storage_url(run, cfg)
    if "://" not in url or url.split("://")[0].split("+")[0] not in ("sqlite", "postgresql", "mysql", "oracle",
                                                                     "mssql"):
        return url  # e.g. a journal storage: Optuna opens it, without heartbeats
    beat = cfg.search.heartbeat_seconds
    # Workers of one SQLite file wait for each other's writes instead of failing on "locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    error = None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9, and used widely
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=beat,
                                                  grace_period=3 * beat, heartbeat_stale_trial_callback=_say_stale)
        except Exception as e:  # noqa: BLE001 - a driver missing, a server down, a bad URL: all the user's to fix
            # Workers that start together on an empty database race to create Optuna's
            # tables; the loser's CREATE TABLE fails, and a second try finds them made.
            error = e
            time.sleep(1 + attempt)
    raise ConfigError(f"search.storage: cannot open {_safe_url(url)}: {type(error).__name__}: {error}\n  "
                      f"check the URL (postgresql://user:password@host:port/database), that the server "
                      f"is up and the database exists") from None


def sampler_seed(cfg: Config, trials_so_far: int) -> int:
    """The one seed shifted by the study's trials, and for a worker of a parallel search by its id too."""
    if cfg.search.sampler == "grid":
        # The seed shuffles the grid and each trial stores its index in that order, so every
        # continuation and worker must share it (Optuna's advice); the grid sampler then never
        # repeats a point while unvisited ones remain. A shifted seed would revisit points.
        return cfg.experiment.seed
    # Shifted by the trials already in the study, so a continued study does not redraw the
    # values its first part tried. Workers of one study start with the same trial count, so
    # on a shared (non-SQLite) storage each mixes in its own id, or all would draw the same
    # trials. SQLite (the default) is taken as one worker: its draws depend on the seed only.
    # A parallel search is not repeatable anyway (which worker gets which trial is timing);
    # naming workers in TUNEBOOK_SEARCH_WORKER makes each worker's own draws repeatable.
    worker = os.environ.get(WORKER_ENV)
    if worker is None and cfg.search.storage and not cfg.search.storage.startswith("sqlite"):
        worker = f"{socket.gethostname()}:{os.getpid()}"  # the host too: containers all run as pid 1
    if worker is None:
        return cfg.experiment.seed + trials_so_far
    return zlib.crc32(f"{cfg.experiment.seed}:{trials_so_far}:{worker}".encode())  # stable across processes


def open_study(run: Run, cfg: Config, space: dict[str, dict[str, Any]]) -> optuna.Study:
    """Create the study, or join it when it exists (a rerun or another worker continues it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our logs say what each trial did
    study = optuna.create_study(storage=storage(run, cfg), study_name=cfg.search.study_name or cfg.experiment.name,
                                direction=cfg.search.direction, pruner=pruner(cfg), load_if_exists=True)
    study.sampler = sampler(cfg, space, sampler_seed(cfg, len(study.trials)))
    return study


class PruningCallback(TrainerCallback):
    """Report the metric to Optuna at each evaluation; stop the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step == 0 or metrics is None:
            return  # step 0 is the untrained model: the same for every trial
        if self.metric not in metrics:
            raise ConfigError(f"search.metric: {self.metric!r} is not in the evaluation logs "
                              f"(they have {sorted(k for k in metrics if k.startswith('eval_'))})")
        self.trial.report(metrics[self.metric], state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={metrics[self.metric]:.4f} at step {state.global_step}")


def trial_score(history: list[dict], metric: str, direction: str) -> float:
    """A trial's best value of the metric over its evaluations after step 0."""
    values = [h[metric] for h in history if metric in h and h.get("step", 0) > 0]
    if not values:
        raise ConfigError(f"search.metric: no {metric!r} after step 0; the trial must evaluate at least once "
                          f"(tune.eval_steps <= the trial's steps, and validation rows)")
    return min(values) if direction == "minimize" else max(values)


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


def _say_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Log a trial Optuna failed for want of heartbeats (its worker killed, or its machine gone)."""
    print(f"trial {trial.number}: no heartbeat from its worker {trial.user_attrs.get('worker')}; marked failed",
          flush=True)


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


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best finished trial, or None when none finished."""
    try:
        return study.best_trial
    except ValueError:
        return None


def _safe_url(url: str) -> str:
    """A storage URL without its password (metrics.json is shared)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file): nothing secret in it
        return url


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
