"""Several search workers (`python -m helpers.search`, separate processes) on one Optuna study:
on SQLite, and on a real PostgreSQL server when TUNEBOOK_TEST_POSTGRES names one (.ci/run
starts one with .ci/postgres.sh; in CI its absence is a failure, not a skip)."""
import os
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from helpers import data, paths, runs, search, search_study
from helpers.config import apply_overrides, load_config

SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"
POSTGRES_ENV = "TUNEBOOK_TEST_POSTGRES"
N_TRIALS = 5
# Tiny trials: 2 steps of 8 tweets, one evaluation; a learning rate from a continuous range,
# so two trials that drew the same value would be a seeding bug, not chance.
TINY = {"tune.max_steps": 2, "tune.eval_steps": 2, "tune.save_steps": 2, "tune.batch_size": 8,
        "search.enabled": True, "search.sampler": "random", "search.n_trials": N_TRIALS, "search.prune": False,
        "search.heartbeat_seconds": 2,
        "search.space": {"tune.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}


def postgres_url() -> str:
    """The test server's URL; a skip without one, a failure in CI (which must have one)."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{POSTGRES_ENV} is not set in CI: .ci/run starts PostgreSQL (.ci/postgres.sh) and sets it")
    pytest.skip(f"no PostgreSQL server: `source .ci/postgres.sh && pg_start` starts one and sets {POSTGRES_ENV}")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request) -> str | None:
    """search.storage for the study: None is the run folder's search.db."""
    return None if request.param == "sqlite" else postgres_url()


@pytest.fixture(scope="module")
def tweets() -> list[dict]:
    return data.load(load_config(SMOKE_SENTIMENT)).rows


def make_run(reports, tweets: list[dict], **overrides):
    run = runs.create_run(load_config(SMOKE_SENTIMENT, {**TINY, **overrides}), reports=reports)
    data.write_jsonl(run.data / "train.jsonl", tweets[:32])
    data.write_jsonl(run.data / "validation.jsonl", tweets[32:48])
    return run, run.config()


def worker(run: runs.Run) -> subprocess.Popen:
    """One `python -m helpers.search` worker on the run's study (what make search-worker starts)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop(search_study.WORKER_ENV, None)  # each names itself by host and process id
    return subprocess.Popen([sys.executable, "-m", "helpers.search", "--run-dir", str(run.dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------- fast checks

def test_postgresql_urls_use_psycopg_3_and_rdb_storages_beat(tmp_path):
    cfg = apply_overrides(load_config(SMOKE_SENTIMENT), {"search.storage": "postgresql://me@db:5432/optuna"})
    run = runs.create_run(cfg, reports=tmp_path)
    assert search_study.storage_url(run, cfg) == "postgresql+psycopg://me@db:5432/optuna"
    local = search_study.storage(run, load_config(SMOKE_SENTIMENT, {"search.heartbeat_seconds": 7}))
    assert isinstance(local, optuna.storages.RDBStorage) and local.get_heartbeat_interval() == 7
    bad = apply_overrides(cfg, {"search.storage": "postgresql://me@/optuna?host=/nonexistent-socket-dir"})
    with pytest.raises(search.ConfigError, match="search.storage: cannot open postgresql"):
        search_study.open_study(run, bad, {})


def test_a_dead_workers_running_trial_is_failed_and_a_live_ones_kept(tmp_path):
    run = runs.create_run(load_config(SMOKE_SENTIMENT), reports=tmp_path)
    study = optuna.create_study(storage=search_study.storage(run, run.config()), study_name="s")
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its process id is free
    dead, elsewhere, alive = study.ask(), study.ask(), study.ask()
    dead.set_user_attr("worker", {"host": search.socket.gethostname(), "pid": gone.pid})
    elsewhere.set_user_attr("worker", {"host": "another-machine", "pid": gone.pid})  # only its heartbeat can tell
    alive.set_user_attr("worker", {"host": search.socket.gethostname(), "pid": os.getppid()})
    assert search.fail_dead_workers(study) == [dead.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]


def test_a_trial_started_when_the_study_is_full_never_trains(tmp_path, tweets):
    run, cfg = make_run(tmp_path, tweets, **{"search.n_trials": 2})
    study = search_study.open_study(run, cfg, search_study.parse_space(cfg))
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    with pytest.raises(search.SurplusTrial, match="2 trials before it already fill search.n_trials=2"):
        search.objective(study.ask(), run, cfg, search_study.parse_space(cfg), tweets[:8], tweets[8:16])
    assert not (run.model / "search").exists()  # nothing trained


# ---------------------------------------------------------------- real workers

@pytest.mark.slow
def test_two_workers_fill_one_study_and_a_killed_one_leaves_it_usable(tmp_path, tweets, storage):
    name = f"workers-{uuid.uuid4().hex[:8]}"  # a study of its own on a shared server
    run, cfg = make_run(tmp_path, tweets, **{"search.storage": storage, "search.study_name": name})
    config_before = run.config_file.read_text()
    a, b = worker(run), worker(run)

    # Kill b during its second trial (after it finished one), as a lost machine would.
    started, seen = [], []
    deadline = time.monotonic() + 600
    while len(started) < 2:
        line = b.stdout.readline()
        assert line and time.monotonic() < deadline, "worker b ended before its second trial:\n" + "".join(seen[-30:])
        seen.append(line)
        if line.startswith("trial ") and ": {" in line:
            started.append(int(line.split()[1].rstrip(":")))
    time.sleep(0.5)
    b.kill()
    b.wait()  # reaped, as its parent (a shell, a scheduler) would
    out_a, _ = a.communicate(timeout=600)
    assert a.returncode == 0, out_a[-3000:]

    study = optuna.load_study(study_name=name, storage=search_study.storage(run, cfg))
    trials = study.get_trials()
    finished = [t for t in trials if t.state in search.FINISHED]
    assert len(finished) == N_TRIALS  # exactly search.n_trials, though two workers raced for them
    assert study.trials[started[1]].state == TrialState.FAIL  # b's killed trial: failed, not left RUNNING
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.params["tune.learning_rate"] for t in finished}) == N_TRIALS  # distinct draws
    assert {t.user_attrs["worker"]["pid"] for t in finished} == {a.pid, b.pid}  # both workers contributed
    for t in finished:
        assert (run.model / "search" / f"trial-{t.number}" / "log_history.json").is_file()

    # The workers wrote none of the run's own files: stage 04 does, once, without new trials.
    assert not (run.dir / "search-best.yaml").exists() and run.config_file.read_text() == config_before
    again = search.run_search(run, cfg)
    assert len(again.trials) == len(trials)
    best = search.apply_best(run, cfg, again)
    assert best.tune.learning_rate == again.best_params["tune.learning_rate"]
    assert load_config(run.dir / "search-best.yaml").tune.learning_rate == best.tune.learning_rate
    assert runs.read_json(run.metrics_file)["search"]["failed"] == sum(t.state == TrialState.FAIL for t in trials)
