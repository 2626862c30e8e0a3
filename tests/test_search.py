"""The Optuna search: space checks, samplers, pruning, and a tiny study that writes a rerunnable best YAML."""
import optuna
import pytest
import yaml

from helpers import data, paths, runs, search
from helpers.config import ConfigError, load_config

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
        search.parse_space(cfg_with(space))


def test_empty_space_is_an_error():
    with pytest.raises(ConfigError, match="search.space: empty"):
        search.parse_space(load_config(SMOKE_SENTIMENT))


def test_grid_lists_every_value_and_needs_discrete_floats():
    space = search.parse_space(cfg_with({"tune.lora.r": {"type": "int", "low": 4, "high": 12, "step": 4},
                                         "tune.method": {"type": "categorical", "choices": ["lora", "dora"]},
                                         "tune.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-4,
                                                                "step": 1e-4}}))
    values = search.grid(space)
    assert values["tune.lora.r"] == [4, 8, 12] and values["tune.method"] == ["lora", "dora"]
    assert values["tune.learning_rate"] == pytest.approx([1e-4, 2e-4, 3e-4])
    with pytest.raises(ConfigError, match="search.space.tune.warmup_ratio: the grid sampler"):
        search.grid(search.parse_space(cfg_with({"tune.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1}})))


def test_suggest_follows_the_space_and_seed():
    space = search.parse_space(cfg_with({
        "tune.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "tune.lora.r": {"type": "categorical", "choices": [4, 8, 16]}}))
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
        draws.append(search.suggest(study.ask(), space))
    assert draws[0] == draws[1]  # the one seed gives the same trials
    assert 1e-5 <= draws[0]["tune.learning_rate"] <= 1e-3 and draws[0]["tune.lora.r"] in (4, 8, 16)


def test_pruning_callback_stops_a_trial_worse_than_the_median():
    cfg = cfg_with({"tune.lora.r": {"type": "categorical", "choices": [4, 8]}})
    study = optuna.create_study(pruner=search.pruner(cfg))  # minimize eval_loss, median of 2 finished trials
    for value in (1.0, 1.2):
        trial = study.ask()
        for step in (4, 8):
            trial.report(value, step)
        study.tell(trial, value)
    args = control = None
    trial = study.ask()
    callback = search.PruningCallback(trial, "eval_loss")
    callback.on_evaluate(args, type("S", (), {"global_step": 4})(), control, metrics={"eval_loss": 5.0})  # warmup
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(args, type("S", (), {"global_step": 8})(), control, metrics={"eval_loss": 5.0})
    with pytest.raises(ConfigError, match="search.metric"):
        search.PruningCallback(study.ask(), "eval_f1").on_evaluate(
            args, type("S", (), {"global_step": 8})(), control, metrics={"eval_loss": 1.0})


def test_trial_score_ignores_step_0():
    history = [{"step": 0, "eval_loss": 0.1}, {"step": 2, "eval_loss": 0.9}, {"step": 4, "eval_loss": 0.7}]
    assert search.trial_score(history, "eval_loss", "minimize") == 0.7
    assert search.trial_score(history, "eval_loss", "maximize") == 0.9


def test_search_writes_trials_figures_and_a_best_yaml_that_reruns(tmp_path):
    tweets = data.load(load_config(SMOKE_SENTIMENT)).rows
    cfg = load_config(SMOKE_SENTIMENT, {
        "tune.max_steps": 2, "tune.eval_steps": 2, "tune.save_steps": 2, "tune.batch_size": 8,
        "search.enabled": True, "search.sampler": "grid", "search.n_trials": 2,
        "search.space": {"tune.learning_rate": {"type": "categorical", "choices": [1e-4, 3e-3]}}})
    run = runs.create_run(cfg, reports=tmp_path)
    data.write_jsonl(run.data / "train.jsonl", tweets[:32])
    data.write_jsonl(run.data / "validation.jsonl", tweets[32:48])

    study = search.run_search(run, cfg)
    assert (run.dir / "search.db").is_file()
    assert sorted(t.params["tune.learning_rate"] for t in study.trials) == [1e-4, 3e-3]  # the whole grid
    table = search.trials_table(study)
    assert list(table["number"]) == [0, 1] and "tune.learning_rate" in table
    assert (run.figures / "search-history.png").is_file()
    assert (run.dir / "tables" / "search-trials.csv").is_file()
    assert runs.read_json(run.metrics_file)["search"]["best_value"] == study.best_value

    best = search.best_config(cfg, study)
    path = search.write_best(run, best)
    assert "extends" not in yaml.safe_load(path.read_text())
    again = load_config(path)
    assert again == best and again.tune.learning_rate == study.best_params["tune.learning_rate"]
    assert not again.search.enabled and again.experiment.name == "smoke-sentiment-best"
    for trial in (0, 1):  # each trial's log is kept, its checkpoints are not
        folder = run.model / "search" / f"trial-{trial}"
        assert (folder / "log_history.json").is_file() and not (folder / "checkpoints").exists()

    # Rerun on the same folder: the study is continued, not restarted.
    more = search.run_search(run, load_config(run.config_file, {"search.n_trials": 2}))
    assert len(more.trials) == 2
