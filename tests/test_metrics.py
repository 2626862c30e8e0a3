"""Our local evaluate metrics against values worked out by hand on tiny cases."""
import math

import evaluate
import numpy as np
import pytest
import torch

from helpers import metric_modules, metrics


def scores_of(pred: list[int], n_classes: int = 2) -> np.ndarray:
    """Probabilities whose top class is pred (0.9 on it), for the label-only checks."""
    p = np.full((len(pred), n_classes), 0.1 / (n_classes - 1))
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_accuracy_perfect_and_by_hand():
    assert metrics.classification_scores([0, 1, 2], scores_of([0, 1, 2], 3))["accuracy"] == 1.0
    assert metrics.classification_scores([0, 1, 0, 0], scores_of([0, 1, 1, 0]))["accuracy"] == 0.75


def test_macro_f1_two_by_two_by_hand():
    # refs [0,0,1,1], preds [0,1,1,1]: class 0 P=1 R=1/2 F1=2/3; class 1 P=2/3 R=1 F1=4/5.
    res = metrics.classification_scores([0, 0, 1, 1], scores_of([0, 1, 1, 1]))
    assert res["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert res["macro_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert res["macro_recall"] == pytest.approx(0.75)


def test_macro_f1_never_predicted_class_scores_zero():
    res = metrics.classification_scores([0, 0, 1], scores_of([0, 0, 0]))
    # class 0: P=2/3 R=1 F1=0.8; class 1: never predicted, F1 = 0.
    assert res["macro_f1"] == pytest.approx(0.4)


def test_roc_auc_by_hand():
    # Class-1 scores: positives 0.35, 0.8; negatives 0.1, 0.4. Of the 4 (pos, neg) pairs, 3 are
    # ordered right (0.35 < 0.4 is the miss): AUC = 3/4, for both classes of a binary task.
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    res = metrics.roc_auc(np.array([0, 0, 1, 1]), scores)
    assert res["auc_per_class"] == pytest.approx([0.75, 0.75])
    assert res["macro_auc"] == pytest.approx(0.75)
    assert metrics.classification_scores([0, 0, 1, 1], scores)["macro_auc"] == pytest.approx(0.75)


def test_softmax_rows_sum_to_one_and_keep_order():
    p = metrics.softmax(np.array([[1000.0, 1001.0], [0.0, 0.0]]))  # large logits: no overflow
    assert p.sum(axis=1) == pytest.approx([1, 1]) and p[0, 1] > p[0, 0] and p[1].tolist() == [0.5, 0.5]


def test_roc_auc_perfect_and_absent_class():
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    res = metrics.roc_auc(np.array([0, 1, 0, 1]), scores)
    assert res["auc_per_class"][:2] == [1.0, 1.0] and math.isnan(res["auc_per_class"][2])
    assert res["macro_auc"] == 1.0  # the absent class has no ROC curve and is left out


def test_combine_works_offline_with_mixed_inputs():
    suite = evaluate.combine([metric_modules.RougeL(), metric_modules.Bleu()])
    same = ["the cat sat on the mat all day"]  # BLEU needs 4-grams
    res = suite.compute(predictions=same, references=same)
    assert res["rougeL"] == pytest.approx(1.0) and res["bleu"] == pytest.approx(100.0)


def test_uniform_logits_give_vocab_size_perplexity():
    vocab = 50
    labels = torch.tensor([[-100, 3, 7, -100, 1], [-100, -100, -100, -100, 5]])
    first, second = metrics.token_nlls(torch.zeros(2, 5, vocab), labels)  # positions 1, 2, 4 and 4 are scored
    assert first.tolist() == pytest.approx([math.log(vocab)] * 3) and second.tolist() == pytest.approx([math.log(vocab)])
    scored = first.double().numpy()
    assert metric_modules.Perplexity().compute(nlls=[scored])["perplexity"] == pytest.approx(vocab)


def test_perplexity_pools_tokens_not_examples():
    # NLLs log 2 (1 token) and log 8, log 8 (2 tokens): mean = 7/3 log 2, so ppl = 2^(7/3),
    # not the mean of the two examples' perplexities (2 and 8).
    res = metric_modules.Perplexity().compute(nlls=[[math.log(2)], [math.log(8), math.log(8)]])
    assert res["perplexity"] == pytest.approx(2 ** (7 / 3)) and res["tokens"] == 3


def test_bleu_identical_and_disjoint():
    assert metric_modules.Bleu().compute(predictions=["the cat sat on the mat"],
                                  references=["the cat sat on the mat"])["bleu"] == pytest.approx(100)
    assert metric_modules.Bleu().compute(predictions=["dogs bark loudly at night"],
                                  references=["the cat sat on the mat"])["bleu"] == pytest.approx(0)


def test_rouge_l_by_hand():
    # LCS of "the cat sat" in "the cat sat on the mat" is 3 words: P = 1, R = 1/2, F1 = 2/3.
    assert metric_modules.RougeL().compute(predictions=["the cat sat"],
                                    references=["the cat sat on the mat"])["rougeL"] == pytest.approx(2 / 3)


def test_semantic_similarity_identical_is_one_and_orders_meaning():
    sim = metric_modules.SemanticSimilarity()
    assert sim.compute(predictions=["How do I reset my password?"],
                       references=["How do I reset my password?"])["semantic_similarity"] == pytest.approx(1, abs=1e-5)
    close = metrics.cosine_pairs(metrics.embed(["I forgot my password"]), metrics.embed(["How do I reset my password?"]))
    far = metrics.cosine_pairs(metrics.embed(["The weather is sunny"]), metrics.embed(["How do I reset my password?"]))
    assert close[0] > far[0]


def test_expected_calibration_error_by_hand():
    assert metrics.expected_calibration_error(np.ones(4), np.ones(4)) == 0.0
    # Half the predictions at 0.9 confidence are right: |0.5 - 0.9| = 0.4 in the one bin used.
    assert metrics.expected_calibration_error(np.array([1.0, 0.0]), np.array([0.9, 0.9])) == pytest.approx(0.4)
    # Two bins, equal weight: 0.3 conf all wrong (gap 0.3), 0.8 conf all right (gap 0.2): 0.25.
    ece = metrics.expected_calibration_error(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.3, 0.3, 0.8, 0.8]))
    assert ece == pytest.approx(0.25)


def test_bootstrap_ci_constant_seeded_and_covering():
    assert metrics.bootstrap_ci(lambda idx: 3.0, 10, 100, 0) == (3.0, 3.0)
    x = np.arange(100, dtype=float)
    first = metrics.bootstrap_ci(lambda idx: x[idx].mean(), 100, 300, seed=7)
    assert first == metrics.bootstrap_ci(lambda idx: x[idx].mean(), 100, 300, seed=7)
    assert first[0] < 49.5 < first[1] and first[1] - first[0] < 20
    assert first != metrics.bootstrap_ci(lambda idx: x[idx].mean(), 100, 300, seed=8)  # the seed matters
    with pytest.raises(TypeError, match="seed"):
        metrics.bootstrap_ci(lambda idx: x[idx].mean(), 100, 300)  # no default: callers pass the one seed
