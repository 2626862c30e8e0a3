"""Our metrics as plain functions over numpy arrays and strings, tested by hand.

Classification scores are plain scikit-learn in one function, `classification_scores`, which
the Trainer's evaluations, cross-validation and stage 05 share. The same math as `evaluate`
modules (to combine with hub metrics) is in `helpers.metric_modules`; this module does not
import `evaluate` (which imports transformers' pipelines: seconds at the top of every stage).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

# ---------------------------------------------------------------- classification

def classification_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 / precision / recall, macro and micro AUC, ECE of one model's class probabilities.

    The one function for classification scores: the Trainer's evaluations, cross-validation
    and stage 05 all call it. y: (N,) label ids; probs: (N, C).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y, probs = np.asarray(y), np.asarray(probs)
    pred = probs.argmax(1)
    # zero_division=0: a class never predicted scores 0 precision rather than a warning and NaN.
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    auc = roc_auc(y, probs)
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f), "macro_precision": float(p),
            "macro_recall": float(r), "macro_auc": auc["macro_auc"], "micro_auc": auc["micro_auc"],
            "ece": expected_calibration_error((pred == y).astype(float), probs.max(1))}


def balanced_class_weights(labels: list[str]) -> dict[str, float]:
    """'Balanced' class weights n / (k * n_label) of a list of labels (4 decimals), for a weighted loss."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = sorted(set(labels))
    weights = compute_class_weight("balanced", classes=np.array(classes), y=labels)
    return {l: round(float(w), 4) for l, w in zip(classes, weights)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) scores, computed stably."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def roc_auc(references: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Per-class one-vs-rest AUC, their unweighted mean (macro), and micro AUC over all cells."""
    from sklearn.metrics import roc_auc_score

    onehot = np.eye(scores.shape[1])[references]  # (N, C)
    per_class = []
    for c in range(scores.shape[1]):
        # A class absent from (or alone in) the references has no ROC curve: NaN, left out of macro.
        defined = 0 < onehot[:, c].sum() < len(onehot)
        per_class.append(float(roc_auc_score(onehot[:, c], scores[:, c])) if defined else float("nan"))
    valid = [a for a in per_class if not np.isnan(a)]
    defined_micro = 0 < onehot.sum() < onehot.size
    return {"macro_auc": float(np.mean(valid)) if valid else float("nan"),
            "micro_auc": float(roc_auc_score(onehot.ravel(), scores.ravel())) if defined_micro else float("nan"),
            "auc_per_class": per_class}


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width bin, weighted by the bin's share.

    scikit-learn draws calibration curves but has no ECE, hence this one function.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


# ---------------------------------------------------------------- language modelling


def perplexity(nlls: list[list[float]] | list[np.ndarray]) -> dict[str, float]:
    """Pooled perplexity: long answers weigh by their token count, as in training."""
    flat = np.concatenate([np.asarray(x, dtype=np.float64) for x in nlls]) if len(nlls) else np.array([])
    if flat.size == 0:
        return {"perplexity": float("nan"), "mean_nll": float("nan"), "tokens": 0}
    return {"perplexity": float(np.exp(flat.mean())), "mean_nll": float(flat.mean()), "tokens": int(flat.size)}


def token_nlls(logits, labels, ignore_index: int = -100) -> list:
    """Per-row 1-D tensors of next-token NLLs (nats) at the labelled positions.

    Only the positions that predict a labelled token go through log-softmax, so the (B, T, V)
    logits are not copied again for the whole padded batch.
    """
    import torch.nn.functional as F

    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    scored = shift_labels != ignore_index  # (B, T-1)
    nll = F.cross_entropy(shift_logits[scored].float(), shift_labels[scored], reduction="none")  # (N,)
    return list(nll.split(scored.sum(dim=1).tolist()))


# ---------------------------------------------------------------- generated text


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per pair, with the Porter stemmer as the hub's `rouge` metric uses."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]



def sentence_bleu(predictions: list[str], references: list[str]) -> list[float]:
    """sacreBLEU per pair (smoothed with effective order, so short answers are not all 0)."""
    import sacrebleu

    return [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(predictions, references)]



_EMBEDDERS: dict[str, tuple[Any, Any]] = {}


def _embedder(folder: str | Path | None) -> tuple[Any, Any]:
    """(tokenizer, model) of a sentence-transformers folder, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    from . import models

    folder = str(folder or models.resolve("all-minilm-l6-v2"))
    if folder not in _EMBEDDERS:
        model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
        _EMBEDDERS[folder] = (AutoTokenizer.from_pretrained(folder), model)
    return _EMBEDDERS[folder]


def embed(texts: list[str], folder: str | Path | None = None, batch_size: int = 32) -> np.ndarray:
    """Unit-length sentence embeddings: mean of token vectors over the attention mask (N, D)."""
    import torch

    tok, model = _embedder(folder)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays of unit vectors."""
    return (a * b).sum(axis=1) if len(a) else np.array([])


# ---------------------------------------------------------------- uncertainty

def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(indices) over n examples drawn with replacement."""
    # No default seed or resamples: every caller passes experiment.seed and evaluate.bootstrap_resamples,
    # so a forgotten argument is an error, not a silently different interval.
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    values = values[~np.isnan(values)]  # e.g. AUC of a resample that lost a class
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
