"""The Optuna study behind a search: the space from search.space, sampler, pruner, storage, and the
callback that reports each evaluation to the trial (helpers.search runs the trials).
"""
from __future__ import annotations

import os
import socket
import time
import warnings
import zlib
from typing import Any

import optuna
from transformers import TrainerCallback

from .config import Config, ConfigError, apply_overrides
from .runs import Run

WORKER_ENV = "TUNEBOOK_SEARCH_WORKER"  # a worker's name in a parallel search: makes its draws repeatable
SPEC_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


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


def _say_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Log a trial Optuna failed for want of heartbeats (its worker killed, or its machine gone)."""
    print(f"trial {trial.number}: no heartbeat from its worker {trial.user_attrs.get('worker')}; marked failed",
          flush=True)


def _safe_url(url: str) -> str:
    """A storage URL without its password (metrics.json is shared)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file): nothing secret in it
        return url


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best finished trial, or None when none finished."""
    try:
        return study.best_trial
    except ValueError:
        return None
