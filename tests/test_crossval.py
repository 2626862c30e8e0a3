"""Cross-validation (stage 04, classification): folds keep augmented copies with their original; the ensemble is scored."""
from helpers import crossval, data, paths, runs, tune
from helpers.config import load_config

SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"


def test_cross_validation_scores_folds_and_ensemble(tmp_path):
    tweets = data.load(load_config(SMOKE_SENTIMENT)).rows
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": 2, "tune.eval_steps": 2, "tune.save_steps": 2,
                                        "tune.cv_folds": 2, "tune.learning_rate": 3e-3})
    run = runs.create_run(cfg, reports=tmp_path / "reports")
    augmented = [{**tweets[0], "id": "aug-1", "augment_op": "swap", "augment_of": tweets[0]["id"]}]
    for name, rows in (("train", tweets[:60] + augmented), ("validation", tweets[60:80]), ("test", tweets[80:110])):
        data.write_jsonl(run.data / f"{name}.jsonl", rows)
    tune.train(run, cfg)

    cv = crossval.cross_validate(run, cfg)
    assert [f["fold"] for f in cv["per_fold"]] == [0, 1]
    assert sum(f["validation_rows"] for f in cv["per_fold"]) == 60  # real rows only: the copy is never held out
    assert 0 <= cv["eval_accuracy"]["mean"] <= 1 and cv["eval_accuracy"]["std"] >= 0
    assert cv["test_rows"] == 30 and set(cv["test_ensemble"]) == {"accuracy", "macro_f1", "macro_auc"}
    assert 0 <= cv["test_single"]["accuracy"] <= 1
    assert runs.read_json(run.metrics_file)["tune"]["cv"]["folds"] == 2
    assert (run.model / "folds" / "1" / "final" / "model.safetensors").is_file()
    assert not (run.model / "folds" / "0" / "checkpoints").exists()
    # A rerun reuses the finished folds (fold.json) and gives the same scores.
    assert crossval.cross_validate(run, cfg)["per_fold"] == cv["per_fold"]
