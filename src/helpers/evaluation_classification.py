"""Stage 05, classification: the tuned classifier against a TF-IDF + logistic regression
baseline trained on the same rows, in every table and figure (scores, per class, confusion,
ROC, precision-recall, calibration, the most confident mistakes).

Class probabilities come from the engine (helpers.inference.predict_proba); every score from
helpers.metrics.classification_scores, the function the Trainer's evaluations and
cross-validation use too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import metrics, plots
from .evaluation import ci_text

plt = plots.plt


def tfidf_baseline(train: list[dict], texts: list[str], labels: list[str], seed: int) -> np.ndarray:
    """Probabilities from TF-IDF word 1-2 grams + logistic regression fit on train: (N, C)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(max_iter=2000, random_state=seed))
    pipe.fit([r["text"] for r in train], [r["label"] for r in train])
    probs = pipe.predict_proba(texts)
    # Align columns to the model's label order; a label absent from train gets probability 0.
    cols = list(pipe.classes_)
    return np.stack([probs[:, cols.index(l)] if l in cols else np.zeros(len(texts)) for l in labels], axis=1)


def _boot(y: np.ndarray, probs: np.ndarray, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals of accuracy, macro F1 and macro AUC (sklearn directly: fast)."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    stats = {"accuracy": lambda s: float((pred[s] == y[s]).mean()),
             "macro_f1": lambda s: float(f1_score(y[s], pred[s], average="macro", labels=range(n_classes),
                                                  zero_division=0)),
             "macro_auc": lambda s: metrics.roc_auc(y[s], probs[s])["macro_auc"]}
    return {k: metrics.bootstrap_ci(f, len(y), resamples, seed) for k, f in stats.items()}


def summary_table(y: np.ndarray, probs: dict[str, np.ndarray], resamples: int, seed: int) -> pd.DataFrame:
    """One row per model (tuned, baseline; single: an ensemble's model/final alone): headline scores with 95%
    bootstrap intervals."""
    recs = []
    for name, p in probs.items():
        s, ci = metrics.classification_scores(y, p), _boot(y, p, resamples, seed)
        rec: dict[str, Any] = {"model": name, "examples": len(y)}
        for key in ("accuracy", "macro_f1", "macro_auc"):
            rec[key], rec[f"{key}_ci"] = s[key], ci_text(*ci[key], digits=3)
            rec[f"{key}_lo"], rec[f"{key}_hi"] = ci[key]
        rec.update({k: s[k] for k in ("macro_precision", "macro_recall", "micro_auc", "ece")})
        recs.append(rec)
    return pd.DataFrame(recs)


def summary_display(table: pd.DataFrame) -> pd.DataFrame:
    """The summary without raw interval bounds, rounded for reading."""
    shown = table[[c for c in table.columns if not c.endswith(("_lo", "_hi"))]].round(3)
    # Spaced names wrap in a narrow column; "accuracy_ci" would not.
    return shown.rename(columns=lambda c: c.replace("_ci", " 95% CI").replace("_", " "))


def per_class_table(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> pd.DataFrame:
    """Precision, recall, F1, support and one-vs-rest AUC per class, per model."""
    from sklearn.metrics import precision_recall_fscore_support

    recs = []
    for name, p in probs.items():
        pr, rc, f1, sup = precision_recall_fscore_support(y, p.argmax(1), labels=range(len(labels)), zero_division=0)
        auc = metrics.roc_auc(y, p)["auc_per_class"]
        for c, label in enumerate(labels):
            recs.append({"model": name, "class": label, "precision": pr[c], "recall": rc[c], "f1": f1[c],
                         "support": int(sup[c]), "auc": auc[c]})
    return pd.DataFrame(recs).round(3)


def confusion_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """Confusion matrices side by side (rows: true class, columns: predicted), counts shown."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.4), squeeze=False)
    for ax, (name, p) in zip(axes[0], probs.items()):
        ConfusionMatrixDisplay.from_predictions(y, p.argmax(1), labels=range(len(labels)), display_labels=labels,
                                                ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(name)
        ax.grid(False)
    fig.tight_layout()
    return fig


def roc_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """One-vs-rest ROC curve per class and the micro average, one panel per model, AUC in the legend."""
    from sklearn.metrics import RocCurveDisplay

    onehot = np.eye(len(labels))[y]
    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.6), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], probs.items()):
        for c, label in enumerate(labels):
            if 0 < onehot[:, c].sum() < len(y):
                RocCurveDisplay.from_predictions(onehot[:, c], p[:, c], name=label, ax=ax, curve_kwargs={"lw": 1.2})
        RocCurveDisplay.from_predictions(onehot.ravel(), p.ravel(), name="micro avg", ax=ax,
                                         curve_kwargs={"lw": 2, "ls": ":", "color": "k"},
                                         plot_chance_level=True)
        macro = metrics.roc_auc(y, p)["macro_auc"]
        ax.set_title(f"{name} (macro AUC {macro:.3f})", fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """Precision-recall curve per class (one vs rest), average precision in the legend."""
    from sklearn.metrics import PrecisionRecallDisplay

    onehot = np.eye(len(labels))[y]
    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.6), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], probs.items()):
        for c, label in enumerate(labels):
            if onehot[:, c].sum():
                PrecisionRecallDisplay.from_predictions(onehot[:, c], p[:, c], name=label, ax=ax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def calibration_figure(y: np.ndarray, probs: dict[str, np.ndarray], bins: int = 10) -> plt.Figure:
    """Reliability diagram of top-label confidence: on the diagonal, 80% sure means 80% right."""
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH * 0.6, 3.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, p in probs.items():
        correct, conf = (p.argmax(1) == y).astype(int), p.max(1)
        frac, mean_conf = calibration_curve(correct, conf, n_bins=bins, strategy="uniform")
        ece = metrics.expected_calibration_error(correct.astype(float), conf, bins)
        ax.plot(mean_conf, frac, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("share of those predictions that are right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_rows(rows: list[dict], probs: dict[str, np.ndarray], labels: list[str]) -> list[dict]:
    """One record per test row for data/predictions.jsonl: label, each model's prediction and probabilities."""
    out = []
    for i, r in enumerate(rows):
        rec = {"id": r["id"], "text": r["text"], "label": r["label"]}
        for name, p in probs.items():
            prefix = "" if name == "tuned" else f"{name}_"
            rec[f"{prefix}predicted"] = labels[int(p[i].argmax())]
            rec[f"{prefix}confidence"] = round(float(p[i].max()), 4)
            rec[f"{prefix}probs"] = {l: round(float(v), 4) for l, v in zip(labels, p[i])}
        out.append(rec)
    return out


def worst_misclassified(rows: list[dict], y: np.ndarray, probs: np.ndarray, labels: list[str], k: int) -> pd.DataFrame:
    """The k wrong predictions the model was most confident in: often label noise or a real gap."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
    return pd.DataFrame([{"id": rows[i]["id"], "text": rows[i]["text"], "label": labels[y[i]],
                          "predicted": labels[pred[i]], "confidence": round(float(probs[i, pred[i]]), 3),
                          "p(label)": round(float(probs[i, y[i]]), 3)} for i in wrong],
                        columns=["id", "text", "label", "predicted", "confidence", "p(label)"])


def headline(summary: pd.DataFrame) -> dict[str, Any]:
    """The classification figures metrics.json keeps at the top of 'evaluate'."""
    t = summary.set_index("model")
    out: dict[str, Any] = {"task": "classification", "examples": int(t.loc["tuned", "examples"])}
    # "single": model/final alone, when "tuned" is an ensemble's average (tune.ensemble > 1)
    for model, prefix in (("tuned", ""), ("baseline", "baseline_"), ("single", "single_")):
        if model not in t.index:
            continue
        for key in ("accuracy", "macro_f1", "macro_auc"):
            out[f"{prefix}{key}"] = float(t.loc[model, key])
            out[f"{prefix}{key}_ci"] = [float(t.loc[model, f"{key}_lo"]), float(t.loc[model, f"{key}_hi"])]
        for key in ("macro_precision", "macro_recall", "micro_auc", "ece"):
            out[f"{prefix}{key}"] = float(t.loc[model, key])
    return out
