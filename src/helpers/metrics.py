"""Our metrics as local `evaluate` modules, so they work offline and combine with hub ones.

`evaluate.load("accuracy")` fetches the metric's code from the hub, which fails offline
(our default). These classes wrap the same libraries the hub metrics use (scikit-learn,
sacreBLEU, rouge-score) and are instantiated directly:

    evaluate.combine([RougeL(), Bleu()]).compute(predictions=["a b"], references=["a c"])

Classification scores are plain scikit-learn in one function, `classification_scores`, which
the Trainer's evaluations, cross-validation and stage 05 share.

The math lives in plain functions (tested by hand); the classes only declare the inputs.
Every `_compute` accepts and ignores extra keyword inputs because `evaluate.combine` hands
every module every input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import datasets
import evaluate
import numpy as np

_CITATION = "tunebook local metric (wraps scikit-learn / sacreBLEU / rouge-score)"


class LocalMetric(evaluate.Metric):
    """Base: kept in memory, so no cache files or file locks under ~/.cache (one process)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)


def _info(description: str, features: dict[str, Any]) -> evaluate.MetricInfo:
    """A MetricInfo with our citation and the given input features."""
    return evaluate.MetricInfo(description=description, citation=_CITATION, inputs_description=description,
                               features=datasets.Features(features))


TEXTS = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}


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

class Perplexity(LocalMetric):
    """exp(mean negative log-likelihood per token), pooled over every scored token."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("perplexity from per-token negative log-likelihoods (nats) of each example; "
                     "1 = certain, V = as unsure as a uniform guess over V tokens",
                     {"nlls": datasets.Sequence(datasets.Value("float64"))})

    def _compute(self, nlls: list[list[float]], **_: Any) -> dict[str, float]:
        return perplexity(nlls)


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

class RougeL(LocalMetric):
    """ROUGE-L F-measure (longest common subsequence of words), mean over examples."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("ROUGE-L F1 between each prediction and its reference, averaged, 0..1", TEXTS)

    def _compute(self, predictions: list[str], references: list[str], **_: Any) -> dict[str, float]:
        scores = rouge_l(predictions, references)
        return {"rougeL": float(np.mean(scores)) if scores else float("nan")}


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per pair, with the Porter stemmer as the hub's `rouge` metric uses."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


class Bleu(LocalMetric):
    """Corpus BLEU from sacreBLEU (0..100), one reference per prediction."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("sacreBLEU corpus BLEU, 0..100 (100 = identical)", TEXTS)

    def _compute(self, predictions: list[str], references: list[str], **_: Any) -> dict[str, float]:
        import sacrebleu

        return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}


def sentence_bleu(predictions: list[str], references: list[str]) -> list[float]:
    """sacreBLEU per pair (smoothed with effective order, so short answers are not all 0)."""
    import sacrebleu

    return [float(sacrebleu.sentence_bleu(p, [r]).score) for p, r in zip(predictions, references)]


class SemanticSimilarity(LocalMetric):
    """Mean cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default), -1..1."""

    def __init__(self, embedder: str | Path | None = None, **kwargs: Any) -> None:
        self.embedder = embedder
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return _info("cosine similarity of mean-pooled sentence embeddings, averaged; 1 = same meaning", TEXTS)

    def _compute(self, predictions: list[str], references: list[str], **_: Any) -> dict[str, float]:
        sims = cosine_pairs(embed(predictions, self.embedder), embed(references, self.embedder))
        return {"semantic_similarity": float(sims.mean()) if len(sims) else float("nan")}


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
