"""A seed ensemble (tune.ensemble, classification): members train with their own seeds, and 05, make
predict and make export use their averaged probabilities."""
import html
import re

import numpy as np
import pandas as pd
import pytest

from helpers import (budget, data, ensemble, evaluation_classification, export, metrics, paths, predict, report, runs,
                     training, tune)
from helpers.config import ConfigError, load_config

SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"
TIMING = {"seconds_per_step": 0.5, "seconds_per_validation_row": 0.01}


def test_an_ensemble_is_for_classifiers_and_shares_a_time_budget():
    with pytest.raises(ConfigError, match=r"tune\.ensemble.*set it to 1"):
        load_config(paths.PARAMS / "smoke.yaml", {"tune.ensemble": 2})
    with pytest.raises(ConfigError, match=r"tune\.ensemble"):
        load_config(SMOKE_SENTIMENT, {"tune.ensemble": 0})
    budgeted = {"tune.max_steps": -1, "tune.eval_steps": 50, "tune.save_steps": 50}
    three = budget.plan_budget(load_config(SMOKE_SENTIMENT, {**budgeted, "tune.time_budget_minutes": 6,
                                                             "tune.ensemble": 3}), TIMING, 1000, 100)
    alone = budget.plan_budget(load_config(SMOKE_SENTIMENT, {**budgeted, "tune.time_budget_minutes": 2,
                                                             "tune.ensemble": 1}), TIMING, 1000, 100)
    # each of 3 members gets what 2 of the 6 minutes buy
    assert three["max_steps"] == alone["max_steps"] > 0 and three["ensemble_members"] == 3
    with pytest.raises(ConfigError, match=r"for each of tune\.ensemble's 4 members.*give at least"):
        budget.plan_budget(load_config(SMOKE_SENTIMENT, {"tune.time_budget_minutes": 0.02, "tune.ensemble": 4}),
                           {"seconds_per_step": 0.5, "seconds_per_validation_row": 0.01}, 1000, 100)


def test_members_train_with_their_own_seeds_and_are_used_as_one_model(tmp_path, capsys):
    tweets = data.load(load_config(SMOKE_SENTIMENT)).rows
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": 2, "tune.eval_steps": 2, "tune.save_steps": 2,
                                        "tune.ensemble": 2, "tune.learning_rate": 3e-3, "tune.eval_rows": 12})
    run = runs.create_run(cfg, reports=tmp_path / "reports")
    for name, rows in (("train", tweets[:60]), ("validation", tweets[60:80]), ("test", tweets[80:100])):
        data.write_jsonl(run.data / f"{name}.jsonl", rows)
    tune.train(run, cfg)
    with pytest.raises(FileNotFoundError, match=r"members/1/final holds no model.*run 04-tune-model"):
        ensemble.folders(run, cfg)

    result = ensemble.train_members(run, cfg)
    assert result["members"] == 2 and result["seeds"] == [cfg.experiment.seed, cfg.experiment.seed + 1]
    assert [m["member"] for m in result["per_member"]] == [0, 1]
    # Both validate on model/final's seeded sample of tune.eval_rows, not on one drawn with their own seed.
    assert [m["validation_rows"] for m in result["per_member"]] == [12, 12]
    assert result["per_member"][0]["eval_loss"] == runs.read_json(run.metrics_file)["tune"]["val_loss_best"]
    assert result["per_member"][1]["steps"] == 2 and "eval_loss" in result["per_member"][1]
    assert (run.model / "members" / "1" / "final" / "model.safetensors").is_file()
    assert not (run.model / "members" / "1" / "checkpoints").exists()
    assert not (run.model / "members" / "1" / "tensorboard").exists()  # its timestamps would defeat 05's reuse
    assert runs.read_json(run.metrics_file)["tune"]["ensemble"]["members"] == 2
    # A rerun reuses the finished member (member.json) and gives the same scores.
    assert ensemble.train_members(run, cfg)["per_member"] == result["per_member"]

    texts = [r["text"] for r in tweets[80:100]]
    tuned = ensemble.members_proba(run, cfg, texts, 8)
    first, second = tuned.members
    assert first.shape == second.shape == (20, 3) and tuned.labels == ["negative", "neutral", "positive"]
    assert not np.allclose(first, second)  # another seed: another head start and row order
    assert np.allclose(tuned.average, (first + second) / 2)

    # 05's summary and headline keep model/final alone as "single" beside the averaged "tuned".
    y = np.array([tuned.labels.index(r["label"]) for r in tweets[80:100]])
    summary = evaluation_classification.summary_table(
        y, {"tuned": tuned.average, "baseline": second, "single": first}, resamples=20, seed=0)
    head = evaluation_classification.headline(summary)
    assert head["single_macro_auc"] == metrics.classification_scores(y, first)["macro_auc"]
    assert head["macro_auc"] == metrics.classification_scores(y, tuned.average)["macro_auc"]

    # make predict labels with the average, as 05 scored it.
    new = tmp_path / "new.csv"
    asked = [t.replace('"', "'") for t in texts[:3]]
    new.write_text("text\n" + "".join(f'"{t}"\n' for t in asked), encoding="utf-8")
    out, _, n, _ = predict.predict_file(run, new)
    labelled = pd.read_csv(out)[[f"p({label})" for label in tuned.labels]].to_numpy()
    assert n == 3 and np.allclose(labelled, ensemble.members_proba(run, cfg, asked, 8).average, atol=1e-4)

    # The report's snippet for this model averages the members' pipelines: run as printed, it gives 05's numbers.
    snippet = re.search(r"averaged</h3><pre><code>(.*?)</code></pre>", str(report.use_html(run, cfg)), re.S)
    namespace: dict = {}
    exec(html.unescape(snippet.group(1)), namespace)
    expected = ensemble.members_proba(run, cfg, [namespace["text"]], 8).average[0]
    assert np.allclose([namespace["probs"][label] for label in tuned.labels], expected, atol=1e-5)
    assert capsys.readouterr().out.startswith(tuned.labels[int(expected.argmax())] + " ")

    # make export ships every member beside model/final's files.
    result = export.export_run(run)
    assert result["members"] == [".", "members/1"] and "averaged" in result["note"]
    assert (run.dir / "export" / "members" / "1" / "model.safetensors").is_file()
    assert (run.dir / "export" / "model.safetensors").is_file()


def test_members_train_in_one_process(tmp_path, monkeypatch):
    cfg = load_config(SMOKE_SENTIMENT, {"tune.ensemble": 2})
    run = runs.create_run(cfg, reports=tmp_path / "reports")
    monkeypatch.setattr(training, "world_size", lambda: 2)  # as under accelerate launch
    with pytest.raises(ConfigError, match=r"tune\.ensemble: the members train one after another in one process"):
        tune.run_stage(run, cfg)  # refused before any training
    assert not (run.model / "final").exists()
