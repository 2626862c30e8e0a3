"""The Optuna search: space checks, samplers, pruning, and a tiny study that writes a rerunnable best YAML."""
import optuna
import pytest
import yaml

from helpers import data, paths, runs, search, search_report, search_study
from helpers.config import ConfigError, apply_overrides, load_config

SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"


def cfg_with(space: dict, **search_params):
    """The sentiment smoke config with a search space."""
    return load_config(SMOKE_SENTIMENT, {"search.space": space, **{f"search.{k}": v for k, v in search_params.items()}})


@pytest.mark.parametrize("space, message", [
    ({"tune.learning_rate": {"low": 1e-5, "high": 1e-3}}, "search.space.tune.learning_rate: expected"),
    ({"tune.learning_rate": {"type": "float", "low": 1e-3}}, "needs `low` and `high`"),
    ({"tune.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-5}}, "low <= high"),
    ({"tune.learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True}}, "log scale"),
    ({"tune.lora.r": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"tune.lora.r": {"type": "int", "low": 4, "high": 16, "choices": [4]}}, "unknown field"),
    ({"tune.lora.rank": {"type": "int", "low": 4, "high": 16}}, "(?s)search.space.tune.lora.rank.*unknown key"),
    ({"tune.lora.r": {"type": "int", "low": 0, "high": 16}}, "search.space.tune.lora.r: 0 is not usable"),
])
def test_bad_space_names_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        search_study.parse_space(cfg_with(space))


def test_empty_space_is_an_error():
    with pytest.raises(ConfigError, match="search.space: empty"):
        search_study.parse_space(load_config(SMOKE_SENTIMENT))


def test_grid_lists_every_value_and_needs_discrete_floats():
    space = search_study.parse_space(cfg_with({"tune.lora.r": {"type": "int", "low": 4, "high": 12, "step": 4},
                                         "tune.method": {"type": "categorical", "choices": ["lora", "dora"]},
                                         "tune.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-4,
                                                                "step": 1e-4}}))
    values = search_study.grid(space)
    assert values["tune.lora.r"] == [4, 8, 12] and values["tune.method"] == ["lora", "dora"]
    assert values["tune.learning_rate"] == pytest.approx([1e-4, 2e-4, 3e-4])
    with pytest.raises(ConfigError, match="search.space.tune.warmup_ratio: the grid sampler"):
        search_study.grid(search_study.parse_space(cfg_with({"tune.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1}})))


@pytest.mark.parametrize("kind", ["tpe", "random", "grid"])
def test_studies_draw_by_the_one_seed(tmp_path, monkeypatch, kind):
    """open_study as a search opens it: the same seed draws the same trials, another seed others."""
    monkeypatch.delenv(search_study.WORKER_ENV, raising=False)
    lr = {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}
    if kind == "grid":  # the grid needs discrete values: 8 x 3 points, walked in an order the seed shuffles
        lr = {"type": "categorical", "choices": [1e-5 * 2 ** i for i in range(8)]}
    cfg = cfg_with({"tune.learning_rate": lr, "tune.lora.r": {"type": "categorical", "choices": [4, 8, 16]}},
                   sampler=kind)
    space = search_study.parse_space(cfg)

    def draws(seed: int) -> list[dict]:
        """The first 4 trials a fresh study of a fresh run asks for."""
        run = runs.create_run(apply_overrides(cfg, {"experiment.seed": seed}), reports=tmp_path)
        study = search_study.open_study(run, run.config(), space)
        return [search_study.suggest(study.ask(), space) for _ in range(4)]

    first = draws(7)
    assert first == draws(7)  # the one seed gives the same trials
    assert first != draws(8)  # and another seed other ones
    assert all(1e-5 <= d["tune.learning_rate"] <= 1e-3 and d["tune.lora.r"] in (4, 8, 16) for d in first)


def test_parallel_workers_get_their_own_sampler_seed(monkeypatch):
    monkeypatch.delenv(search_study.WORKER_ENV, raising=False)
    local = load_config(SMOKE_SENTIMENT, {"experiment.seed": 5})
    assert search_study.sampler_seed(local, 3) == 8  # one worker on SQLite: the seed shifted by the trials
    shared = apply_overrides(local, {"search.storage": "postgresql://user@db/optuna"})
    mine = search_study.sampler_seed(shared, 3)
    assert mine != search_study.sampler_seed(local, 3) and mine == search_study.sampler_seed(shared, 3)  # this process: stable
    monkeypatch.setattr(search_study.os, "getpid", lambda: 123456789)  # another worker process, same trial count
    assert search_study.sampler_seed(shared, 3) != mine
    seeds = set()
    for worker in ("a", "b"):  # named workers: each one's draws repeat, and differ from the other's
        monkeypatch.setenv(search_study.WORKER_ENV, worker)
        seeds.add(search_study.sampler_seed(shared, 3))
        assert search_study.sampler_seed(shared, 3) == search_study.sampler_seed(local, 3)  # a name applies to any storage
    assert len(seeds) == 2 and all(0 <= s < 2 ** 32 for s in seeds)  # numpy takes 32-bit seeds
    # The grid's seed is its order, which every worker and continuation must share.
    assert search_study.sampler_seed(apply_overrides(shared, {"search.sampler": "grid"}), 3) == 5


def test_pruning_callback_stops_a_trial_worse_than_the_median():
    cfg = cfg_with({"tune.lora.r": {"type": "categorical", "choices": [4, 8]}})
    study = optuna.create_study(pruner=search_study.pruner(cfg))  # minimize eval_loss, median of 2 finished trials
    for value in (1.0, 1.2):
        trial = study.ask()
        for step in (4, 8):
            trial.report(value, step)
        study.tell(trial, value)
    args = control = None
    trial = study.ask()
    callback = search_study.PruningCallback(trial, "eval_loss")
    callback.on_evaluate(args, type("S", (), {"global_step": 4})(), control, metrics={"eval_loss": 5.0})  # warmup
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(args, type("S", (), {"global_step": 8})(), control, metrics={"eval_loss": 5.0})
    with pytest.raises(ConfigError, match="search.metric"):
        search_study.PruningCallback(study.ask(), "eval_f1").on_evaluate(
            args, type("S", (), {"global_step": 8})(), control, metrics={"eval_loss": 1.0})


def test_trial_score_ignores_step_0():
    history = [{"step": 0, "eval_loss": 0.1}, {"step": 2, "eval_loss": 0.9}, {"step": 4, "eval_loss": 0.7}]
    assert search_study.trial_score(history, "eval_loss", "minimize") == 0.7
    assert search_study.trial_score(history, "eval_loss", "maximize") == 0.9


def test_optuna_plots_keep_the_house_style_and_skip_importance_with_one_trial():
    import matplotlib

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 2:
            trial.report(5.0, 1)
            raise optuna.TrialPruned()
        return x + trial.suggest_categorical("y", [1, 2])

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=5)
    style = dict(matplotlib.rcParams)
    ax = search_report.history_figure(study, "eval_loss").axes[0]
    assert ax.get_ylabel() == "eval_loss" and "pruned (last reported value)" in ax.get_legend_handles_labels()[1]
    importance = search_report.importance_figure(study, seed=0)
    bars = sorted(t.get_text() for t in importance.axes[0].get_yticklabels())
    assert bars == ["x", "y"]
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style stayed inside its plots
    matplotlib.pyplot.close("all")
    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert search_report.importance_figure(one) is None  # importance needs two finished trials


def test_search_writes_trials_figures_a_best_yaml_and_the_runs_config(tmp_path, monkeypatch):
    monkeypatch.delenv(search_study.WORKER_ENV, raising=False)
    tweets = data.load(load_config(SMOKE_SENTIMENT)).rows
    grid = [1e-4, 1e-3, 3e-3]
    cfg = load_config(SMOKE_SENTIMENT, {
        "tune.max_steps": 2, "tune.eval_steps": 2, "tune.save_steps": 2, "tune.batch_size": 8,
        "search.enabled": True, "search.sampler": "grid", "search.n_trials": 2,
        "search.space": {"tune.learning_rate": {"type": "categorical", "choices": grid}}})
    run = runs.create_run(cfg, reports=tmp_path)
    data.write_jsonl(run.data / "train.jsonl", tweets[:32])
    data.write_jsonl(run.data / "validation.jsonl", tweets[32:48])

    study = search.run_search(run, cfg)
    assert (run.dir / "search.db").is_file()
    tried = [t.params["tune.learning_rate"] for t in study.trials]
    assert len(tried) == 2 and len(set(tried)) == 2 and set(tried) < set(grid)  # 2 grid points, no repeat
    table = search_report.trials_table(study)
    assert list(table["number"]) == [0, 1] and "tune.learning_rate" in table
    assert (run.figures / "search-history.png").is_file() and (run.figures / "search-importance.png").is_file()
    assert (run.dir / "tables" / "search-trials.csv").is_file()
    assert runs.read_json(run.metrics_file)["search"]["best_value"] == study.best_value
    for trial in (0, 1):  # each trial's log is kept, its checkpoints are not
        folder = run.model / "search" / f"trial-{trial}"
        assert (folder / "log_history.json").is_file() and not (folder / "checkpoints").exists()

    best = search.apply_best(run, cfg, study)
    assert best == search.best_config(cfg, study) and not best.search.enabled
    assert best.tune.learning_rate == study.best_params["tune.learning_rate"]
    assert run.config() == best  # 05 and 06 read the settings model/final was trained with
    path = run.dir / "search-best.yaml"
    assert "extends" not in yaml.safe_load(path.read_text())
    again = load_config(path)  # reruns the best trial as an experiment of its own
    assert again == apply_overrides(best, {"experiment.name": "smoke-sentiment-best"})

    # Rerun on the same folder, from its config.yaml, with one more trial: the study is
    # continued (its name is the run's), the first two trials stay as they were.
    before = [(t.number, t.params, t.value) for t in study.trials]
    more = search.run_search(run, apply_overrides(run.config(), {"search.n_trials": 3}))
    assert [(t.number, t.params, t.value) for t in more.trials[:2]] == before
    assert len(more.trials) == 3 and sorted(t.params["tune.learning_rate"] for t in more.trials) == grid
