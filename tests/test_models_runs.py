"""Bundled models resolve offline; run folders never collide; metrics merge."""
import json
import os
import subprocess
import sys
import time
from importlib import metadata

import pytest

from helpers import models, paths, runs
from helpers.config import ConfigError, load_config


def test_bundled_chat_model_loads_from_cache_with_template():
    cfg = load_config()
    models.resolve("smollm2-135m-instruct")  # converts once if the cache is missing
    model = models.load_causal_lm(cfg)
    tok = models.load_tokenizer(cfg)
    assert model.config.model_type == "llama" and tok.chat_template
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576  # SmolLM2-135M
    cached = paths.CACHE / "models" / "smollm2-135m-instruct"
    assert (cached / "model.safetensors").is_file() and not list(cached.glob("*.bin"))  # safetensors only


def test_classifier_has_named_labels():
    cfg = load_config(None, {"experiment.task": "classification"})
    clf = models.load_classifier(cfg, ["neg", "pos"])
    assert clf.config.id2label == {0: "neg", 1: "pos"} and clf.config.num_labels == 2


def test_unreachable_hub_id_explains_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, {"model.name_or_path": "no-such-org/no-such-model-xyz"})
    with pytest.raises(ConfigError, match="Offline runs"):
        models.load_tokenizer(cfg)


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        models.resolve(str(tmp_path))


def test_runs_never_overwrite_and_record(reports):
    cfg = load_config(None, {"experiment.name": "t"})
    a, b = runs.create_run(cfg, reports), runs.create_run(cfg, reports)
    assert a.dir != b.dir and a.config() == cfg
    man = json.loads(a.manifest_file.read_text())
    assert man["seed"] == 42 and man["packages"]["torch"] == metadata.version("torch")
    runs.record_metrics(a, "tune", {"loss": 1.0})
    runs.record_metrics(a, "tune", {"steps": 3})
    assert json.loads(a.metrics_file.read_text()) == {"tune": {"loss": 1.0, "steps": 3}}


def test_open_run_picks_newest_or_creates(reports):
    params = paths.PARAMS / "smoke.yaml"
    with pytest.raises(ConfigError, match="run 01-explore-data first"):
        runs.open_run("", params)
    first, _ = runs.open_run("", params, create=True)
    time.sleep(0.01)
    second, _ = runs.open_run("", params, create=True)
    assert runs.open_run("", params)[0].dir == second.dir
    assert runs.open_run(str(first.dir))[0].dir == first.dir


@pytest.mark.slow
def test_two_processes_on_a_fresh_cache_convert_the_bundled_model_once(tmp_path):
    """Two processes that start at once on an empty cache (pytest workers, accelerate ranks, search
    workers): one converts the GGUF, the other waits for it, and both load a whole folder."""
    code = ("from helpers import models; from helpers.config import load_config; "
            "tok = models.load_tokenizer(load_config()); print('loaded', len(tok))")
    env = {**os.environ, "TUNEBOOK_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(paths.ROOT / "src"),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert all(out.startswith("loaded ") for out, _ in outs)
    assert sum("converting the bundled" in err for _, err in outs) == 1, [err[-500:] for _, err in outs]
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob("*.tmp"))
