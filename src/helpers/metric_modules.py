"""Our metrics as local `evaluate` modules, so they work offline and combine with hub ones.

`evaluate.load("accuracy")` fetches the metric's code from the hub, which fails offline
(our default). These classes wrap the plain functions of `helpers.metrics` (the same libraries
the hub metrics use: scikit-learn, sacreBLEU, rouge-score) and are instantiated directly:

    evaluate.combine([RougeL(), Bleu()]).compute(predictions=["a b"], references=["a c"])

The classes only declare the inputs. Every `_compute` accepts and ignores extra keyword inputs
because `evaluate.combine` hands every module every input. Kept apart from `helpers.metrics`
because importing `evaluate` takes seconds (it imports transformers' pipelines), and most
stages only need the plain functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np

from .metrics import cosine_pairs, embed, perplexity, rouge_l

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


class Perplexity(LocalMetric):
    """exp(mean negative log-likelihood per token), pooled over every scored token."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("perplexity from per-token negative log-likelihoods (nats) of each example; "
                     "1 = certain, V = as unsure as a uniform guess over V tokens",
                     {"nlls": datasets.Sequence(datasets.Value("float64"))})

    def _compute(self, nlls: list[list[float]], **_: Any) -> dict[str, float]:
        return perplexity(nlls)


class RougeL(LocalMetric):
    """ROUGE-L F-measure (longest common subsequence of words), mean over examples."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("ROUGE-L F1 between each prediction and its reference, averaged, 0..1", TEXTS)

    def _compute(self, predictions: list[str], references: list[str], **_: Any) -> dict[str, float]:
        scores = rouge_l(predictions, references)
        return {"rougeL": float(np.mean(scores)) if scores else float("nan")}


class Bleu(LocalMetric):
    """Corpus BLEU from sacreBLEU (0..100), one reference per prediction."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("sacreBLEU corpus BLEU, 0..100 (100 = identical)", TEXTS)

    def _compute(self, predictions: list[str], references: list[str], **_: Any) -> dict[str, float]:
        import sacrebleu

        return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}


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
