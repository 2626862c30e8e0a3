"""Stage 04, classification with tune.cv_folds: k-fold cross-validation on the train split.

A driver of stage 04 (helpers.tune runs it after training). Each fold trains with
training.fit_saved on the other folds and is scored on its held-out rows; the k
fold models, their probabilities averaged, are then compared with model/final on the test
split. Writes model/folds/k/{final, fold.json}, tables/tune-cv-folds.csv and metrics["tune"]["cv"].
A rerun reuses every fold whose fold.json exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from . import artifacts, data, ensemble, metrics, runs, training
from .config import Config, ConfigError
from .runs import Run
from .tasks import classification

STAGE = "tune"  # part of stage 04: its table and metrics sit with the tuning's


def cross_validate(run: Run, cfg: Config) -> dict[str, Any]:
    """k-fold CV on the train split: per-fold scores, mean and std, and the fold ensemble vs model/final on test."""
    if cfg.experiment.task != "classification":
        raise ConfigError("tune.cv_folds: cross-validation is for classification; set it to 0 for chat")
    k = cfg.tune.cv_folds
    rows = data.read_jsonl(run.train_file)
    # An augmented copy stays in its original's fold: a copy in training and its original in
    # validation would leak the answer.
    groups = [r.get("augment_of") or r["id"] for r in rows]
    split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.experiment.seed)
    folds = []
    for i, (tr, va) in enumerate(split.split(rows, [r["label"] for r in rows], groups)):
        held_out = [rows[j] for j in va if not rows[j].get("augment_op")]  # score on real rows only
        folds.append(fit_fold(cfg, [rows[j] for j in tr], held_out, run.model / "folds" / str(i), i))
    table = pd.DataFrame(folds)
    artifacts.table(run, STAGE, "cv-folds", table, f"{k}-fold cross-validation on the train split: each fold's "
                    "best validation scores on its held-out rows.")
    scores = {c: {"mean": float(table[c].mean()), "std": float(table[c].std(ddof=1))}
              for c in table.columns if c.startswith("eval_")}
    result = {"folds": k, "per_fold": folds, **scores, **ensemble_scores(run, cfg, k)}
    return runs.record_metrics(run, STAGE, {"cv": result})["cv"]


def fit_fold(cfg: Config, train_rows: list[dict], val_rows: list[dict], folder: Path,
             fold: int) -> dict[str, Any]:
    """Train one fold (or reuse it when finished before); its merged model goes into folder."""
    return training.fit_saved(cfg, train_rows, val_rows, folder, "fold.json", {"fold": fold})


def ensemble_scores(run: Run, cfg: Config, k: int) -> dict[str, Any]:
    """Accuracy, macro F1 and AUC on the test split (stage 05's function): the fold models' averaged
    probabilities vs model/final."""
    test_file = run.data / "test.jsonl"
    test = data.read_jsonl(test_file) if test_file.is_file() else []
    final = run.model / "final"
    if not test or not (final / "config.json").is_file():
        return {"test": "skipped: needs data/test.jsonl and model/final"}
    texts = [r["text"] for r in test]
    found = [final] + [run.model / "folds" / str(i) / "final" for i in range(k)]
    scored = ensemble.folders_proba(found, cfg, texts, cfg.evaluate.batch_size)  # one label order, or an error
    single, folds = scored.members[0], scored.members[1:]
    y = classification.label_ids(test, scored.labels)
    return {"test_rows": len(test), "test_single": headline_scores(y, single),
            "test_ensemble": headline_scores(y, np.mean(folds, axis=0))}  # soft voting: probabilities averaged


def headline_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and macro AUC of class probabilities, as stage 05 computes them."""
    scores = metrics.classification_scores(y, probs)
    return {k: scores[k] for k in ("accuracy", "macro_f1", "macro_auc")}
