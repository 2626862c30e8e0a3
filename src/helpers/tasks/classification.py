"""The classification task: an encoder with a new head learns one label per text.

Rows are `{"id", "text", "label"}`; the label set is `data.labels` when given, else every
label of the training rows, in a fixed order. Batches are padded to the longest text and
grouped by length; the loss may be class-weighted (`tune.class_weights`). At each evaluation
the Trainer logs the same scores stage 05 reports (helpers.metrics.classification_scores).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import TaskType
from transformers import DataCollatorWithPadding

from .. import metrics, models, schema
from ..config import Config

HEAD_NAMES = ("classifier", "score")  # classification heads: new, so always fully trained
PEFT_TASK = TaskType.SEQ_CLS
PREDICTION_LOSS_ONLY = False  # the Trainer keeps the logits to score accuracy, F1 and AUC
BF16_FROZEN_BASE = False


def labels(cfg: Config, rows: list[dict]) -> list[str]:
    """The label set in a fixed order: data.labels when given, else every label of the train rows."""
    return list(cfg.data.labels) if cfg.data.labels else schema.labels_of(rows)


def encode(tokenizer, rows: list[dict], labels: list[str], max_length: int, split: str) -> Dataset:
    """Texts as token ids (cut at max_length) with integer labels; an unknown label is an error."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = [f"{r['id']} ({r['label']!r})" for r in rows if r["label"] not in index]
    if unknown:
        raise schema.DataError(f"{len(unknown)} {split} row(s) have a label outside {labels}: "
                             f"{', '.join(unknown[:5])}; set data.labels or fix the rows")
    if not rows:  # no validation rows: an empty split (the tokenizer fails on an empty list)
        return Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": [index[r["label"]] for r in rows]})


def show_example(tokenizer, row: dict, max_length: int) -> str:
    """One training text as the model sees it (its tokens) and the label it learns."""
    ids = tokenizer(row["text"], truncation=True, max_length=max_length)["input_ids"]
    return f"{len(ids)} tokens: {tokenizer.convert_ids_to_tokens(ids)}\n-> label {row['label']!r}"


def load_base(cfg: Config, labels: list[str], dtype=None):
    """The encoder with a fresh classification head over labels."""
    return models.load_classifier(cfg, labels)


def modules_to_save(model) -> list[str]:
    """Names of the classification head modules (new weights: trained in full, saved with the adapter)."""
    return [n for n in HEAD_NAMES if hasattr(model, n)]


def packs(cfg: Config, model_type: str) -> bool:
    """Classifier batches are padded, never packed (one label per row)."""
    return False


def collator(cfg: Config, tokenizer, model_type: str):
    """Padded to the batch's longest text."""
    return DataCollatorWithPadding(tokenizer)


def loss_weights(cfg: Config, rows: list[dict], labels: list[str]):
    """Class weights for the loss when tune.class_weights asks for them, else None."""
    return class_weights(rows, labels) if cfg.tune.class_weights else None


def class_weights(rows: list[dict], labels: list[str]):
    """Balanced class weights (as clean reports them) of the rows trained on, in the model's label order, as a float tensor."""
    # The rows tune trains on (augmented when 03 ran), not metrics["clean"]["class_weights"]
    # (the clean train split): augmentation can shift the label mix, and the loss sees these rows.
    missing = sorted(set(labels) - {r["label"] for r in rows})
    if missing:
        raise schema.DataError(f"tune.class_weights: label(s) {missing} have no training rows, so their weight is "
                             f"undefined; add rows or drop them from data.labels")
    weights = metrics.balanced_class_weights([r["label"] for r in rows])
    return torch.tensor([weights[label] for label in labels], dtype=torch.float32)


def compute_metrics(pred) -> dict[str, float]:
    """The Trainer's scores at each evaluation (eval_accuracy, eval_macro_f1, eval_macro_auc): stage 05's function."""
    logits, y = np.asarray(pred[0]), np.asarray(pred[1])  # an EvalPrediction indexes as (predictions, label_ids)
    scores = metrics.classification_scores(y, metrics.softmax(logits))
    return {k: scores[k] for k in ("accuracy", "macro_f1", "macro_auc")}


def callbacks(cfg: Config, tokenizer, val_rows: list[dict], samples: Path | None, resumed_step: int) -> list:
    """No extra callbacks for classifiers."""
    return []


def label_ids(rows: list[dict], labels: list[str]) -> np.ndarray:
    """Each row's label as the index of the model's output for it."""
    unknown = sorted({r["label"] for r in rows} - set(labels))
    if unknown:
        raise ValueError(f"test labels {unknown} are not among the model's labels {labels}: "
                         f"was the model tuned on this run's data?")
    index = {l: i for i, l in enumerate(labels)}
    return np.array([index[r["label"]] for r in rows])
