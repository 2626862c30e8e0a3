"""Config layering, validation messages, and every shipped params file."""
from pathlib import Path

import pytest

from helpers import paths
from helpers.config import Config, ConfigError, diff_from_defaults, load_config, to_yaml

PARAMS = sorted((Path(__file__).parents[1] / "params").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.experiment.seed == 42 and cfg.experiment.task == "chat"


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_every_params_file_loads(path):
    cfg = load_config(path)
    assert cfg.experiment.name == path.stem, "name runs after their params file, so reports/ is easy to read"


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_every_params_file_opens_with_a_header(path):
    lines = path.read_text().splitlines()
    header = [line for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("#"))]]
    assert header, f"{path.name} must start with a comment header"
    assert any(f"make pipeline EXP=params/{path.name}" in line for line in header), \
        f"{path.name}: the header must say the command that runs it"


def test_layers_file_then_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("experiment: {name: x}\ntune: {learning_rate: 0.001, max_steps: 5}\n")
    cfg = load_config(f, ["tune.max_steps=7", "model.max_length=64"])
    assert (cfg.experiment.name, cfg.tune.learning_rate, cfg.tune.max_steps, cfg.model.max_length) == ("x", 0.001, 7, 64)
    assert cfg.tune.batch_size == Config().tune.batch_size  # untouched keys keep defaults


def test_extends_merges_base_then_child(tmp_path):
    (tmp_path / "base.yaml").write_text("experiment: {name: base, task: classification}\ntune: {batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nexperiment: {name: child}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.experiment.name, cfg.experiment.task, cfg.tune.batch_size) == ("child", "classification", 4)


def test_unknown_key_names_key_file_and_known_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("tune:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "bad.yaml" in msg and "tune.learning_rat: unknown key" in msg and "learning_rate" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("tune:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"tune\.batch_size: .*'lots'"):
        load_config(f)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["tune.max_steps"])


def test_splits_must_leave_training_data():
    with pytest.raises(ConfigError, match="at least 10%"):
        load_config(None, {"data.split.validation": 0.5, "data.split.test": 0.45})


def test_missing_file_and_loop(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(paths.PARAMS / "smoke.yaml")
    f = tmp_path / "config.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config(f) == cfg


def test_diff_from_defaults_lists_only_changes():
    cfg = load_config(None, {"tune.max_steps": 3, "experiment.name": "d"})
    assert diff_from_defaults(cfg) == {"tune.max_steps": 3, "experiment.name": "d"}


def test_bad_extends_and_clashing_overrides_are_config_errors(tmp_path):
    (tmp_path / "x.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="`extends` must be a file name"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="'tune' was also set to a value"):
        load_config(None, ["tune=1", "tune.max_steps=2"])


def test_classification_gets_its_own_defaults_and_a_given_value_wins(tmp_path):
    chat, cls = load_config(), load_config(overrides={"experiment.task": "classification"})
    assert (chat.tune.learning_rate, chat.tune.batch_size) == (2e-4, 8)
    assert (cls.tune.learning_rate, cls.tune.batch_size) == (1e-3, 32)
    assert chat.model.max_length == cls.model.max_length == "auto"
    f = tmp_path / "p.yaml"
    f.write_text("experiment: {name: p, task: classification}\ntune: {learning_rate: 5.0e-4}\n")
    cfg = load_config(f)
    assert (cfg.tune.learning_rate, cfg.tune.batch_size) == (5e-4, 32)  # the file wins, the rest is the task's
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))  # config.yaml spells the values out and reads back
    assert load_config(tmp_path / "config.yaml") == cfg
    assert diff_from_defaults(cfg) == {"experiment.name": "p", "tune.learning_rate": 5e-4}


def test_every_task_default_names_a_real_key():
    from helpers.config import TASK_DEFAULTS, flatten

    known = flatten(Config().model_dump(mode="json"))
    for task, keys in TASK_DEFAULTS.items():
        assert set(keys) <= set(known), f"TASK_DEFAULTS[{task!r}] names unknown keys"
        assert load_config(overrides={"experiment.task": task}).experiment.task == task


def test_max_length_is_a_number_or_auto():
    assert load_config(overrides={"model.max_length": 64}).model.max_length == 64
    for bad in ("long", 4):
        with pytest.raises(ConfigError, match="model.max_length"):
            load_config(overrides={"model.max_length": bad})
