"""Stage 05 helpers on tiny, hand-checkable inputs (a 1-layer random model for the chat paths)."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import chat, data, evaluation, evaluation_chat, evaluation_classification, inference, models, runs
from helpers.tasks import classification
from helpers.config import ConfigError, load_config

SYSTEM = {"role": "system", "content": "You are terse."}


def convo(i: int, topic: str = "billing", turns: int = 1) -> dict:
    msgs = [SYSTEM]
    for t in range(turns):
        msgs += [{"role": "user", "content": f"Question {i}.{t} about the plan?"},
                 {"role": "assistant", "content": f"Answer {i}.{t}: it costs {i + t} dollars."}]
    return {"id": f"c{i}", "messages": msgs, "topic": topic, "source": f"t:{i}"}


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(load_config())


@pytest.fixture(scope="module")
def tiny_lm(tok):
    """A random one-layer Llama with SmolLM2's vocabulary: real shapes, milliseconds per call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


# ---------------------------------------------------------------- chat

def test_batched_nlls_equal_one_at_a_time_and_count_assistant_tokens(tok, tiny_lm):
    rows = [convo(0), convo(1, turns=2), convo(2, turns=3)]
    batched = inference.token_nlls(tiny_lm, tok, rows, 192, batch_size=3)
    for row, nll in zip(rows, batched):
        alone = inference.token_nlls(tiny_lm, tok, [row], 192, batch_size=1)[0]
        assert nll == pytest.approx(alone, abs=1e-4)  # right padding + mask change nothing
        assert len(nll) == chat.encode(tok, row["messages"], 192).n_loss_tokens


def test_batched_left_padded_generation_equals_one_at_a_time(tok, tiny_lm):
    rows = [convo(0), convo(1, turns=3), convo(22)]
    together = inference.generate(tiny_lm, tok, rows, max_new_tokens=6, batch_size=3)
    for row, ans in zip(rows, together):
        alone = inference.generate(tiny_lm, tok, [row], max_new_tokens=6, batch_size=1)[0]
        assert (ans["answer"], ans["new_tokens"]) == (alone["answer"], alone["new_tokens"])
        assert 1 <= ans["new_tokens"] <= 6


def test_bf16_check_runs_on_a_real_model(tok, tiny_lm):
    cfg = load_config(overrides={"evaluate.batch_size": 2, "model.max_length": 64})
    table = evaluation_chat.check_bf16({"tuned": tiny_lm}, tok, [convo(0), convo(1)], cfg)
    row = table.loc["tuned"]
    assert row["relative_diff"] == pytest.approx(abs(row["bf16_perplexity"] / row["fp32_perplexity"] - 1))
    assert row["bf16_passes"] == evaluation_chat.bf16_passes(row, 0.005)


@pytest.mark.parametrize("bf16_nll, bf16_seconds, passes", [
    (1.002, 0.5, True),  # perplexity e^1.002 vs e^1: 0.2% apart, and faster
    (1.002, 2.0, False),  # close enough, but slower
    (1.1, 0.5, False),  # faster, but perplexity 10.5% off
])
def test_bf16_check_passes_only_when_close_and_faster(monkeypatch, bf16_nll, bf16_seconds, passes):
    """A controlled check: fixed NLLs and a clock that each scoring pass advances by a set time."""
    clock = [0.0]

    def fake_nlls(model, tokenizer, rows, max_length, batch_size, bf16=False):
        clock[0] += bf16_seconds if bf16 else 1.0
        return [np.full(4, bf16_nll if bf16 else 1.0) for _ in rows]

    monkeypatch.setattr(evaluation_chat.inference, "token_nlls", fake_nlls)
    monkeypatch.setattr(evaluation_chat, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = load_config(overrides={"evaluate.batch_size": 2})
    table = evaluation_chat.check_bf16({"base": None, "tuned": None}, None, [convo(0), convo(1)], cfg)
    assert table.loc["tuned", "relative_diff"] == pytest.approx(math.exp(bf16_nll - 1) - 1)
    assert list(table["bf16_passes"]) == [passes, passes] and evaluation_chat.bf16_ok(table) == passes
    # One model failing keeps both in fp32: base and tuned are compared in one precision.
    assert not evaluation_chat.bf16_ok(table.assign(bf16_passes=[True, False]))


def test_scoring_precision_follows_the_setting(monkeypatch):
    rows = [convo(0)]
    for setting, bf16 in (("fp32", False), ("bf16", True)):  # no check runs: the models are never called
        cfg = load_config(overrides={"evaluate.precision": setting})
        assert evaluation_chat.scoring_precision({"tuned": None}, None, rows, cfg) == (bf16, None)
    assert load_config().evaluate.precision == "fp32"  # default: results depend only on the seed
    for passes in (True, False):
        check = pd.DataFrame({"model": ["base", "tuned"], "bf16_passes": [passes, True],
                              "relative_diff": [0.001, 0.002]}).set_index("model")
        monkeypatch.setattr(evaluation_chat, "check_bf16", lambda *a, **k: check)
        bf16, got = evaluation_chat.scoring_precision({}, None, rows, load_config(overrides={"evaluate.precision": "auto"}))
        assert bf16 == passes and got is check
    with pytest.raises(ConfigError, match="evaluate.precision"):
        load_config(overrides={"evaluate.precision": "fp16"})


def test_slices_topic_turns_and_augmentation():
    assert evaluation_chat.slices(convo(0, "billing", 2)) == {"topic": "billing", "turns": "2 turns"}
    aug = {**convo(1, "", 1), "augment_op": ""}
    assert evaluation_chat.slices(aug) == {"topic": "(none)", "turns": "1 turn", "augmentation": "original"}


def test_perplexity_table_by_hand():
    rows = [convo(0, "a"), convo(1, "a"), convo(2, "b")]
    # base: every token at NLL log 4 (ppl 4); tuned: log 2 (ppl 2); 2 + 3 + 5 tokens.
    base = [np.full(n, math.log(4)) for n in (2, 3, 5)]
    tuned = [np.full(n, math.log(2)) for n in (2, 3, 5)]
    table = evaluation_chat.perplexity_table(rows, {"base": base, "tuned": tuned}, resamples=50, seed=0).set_index(["slice", "group"])
    overall = table.loc[("overall", "all")]
    assert (overall["examples"], overall["tokens"]) == (3, 10)
    assert overall["base_ppl"] == pytest.approx(4) and overall["tuned_ppl"] == pytest.approx(2)
    assert overall["change_pct"] == pytest.approx(-50) and overall["change_lo"] == pytest.approx(-50)
    assert table.loc[("topic", "a"), "tokens"] == 5 and table.loc[("topic", "b"), "examples"] == 1
    head = evaluation_chat.headline(table.reset_index(), bf16=False)
    assert head["perplexity_tuned"] == pytest.approx(2) and head["bf16"] is False
    assert "bf16_relative_diff" not in head  # no check ran (evaluate.precision fp32)


def test_example_losses_never_lists_one_example_twice():
    rows = [convo(i) for i in range(3)]
    nlls = {"base": [np.ones(2)] * 3, "tuned": [np.full(2, v) for v in (0.5, 2.0, 1.0)]}
    table = evaluation_chat.example_losses(rows, nlls, k=5)
    assert list(table["which"]) == ["best", "worst"] and list(table["id"]) == ["c0", "c1"]


def test_perturb_rows_changes_only_user_turns_and_is_seeded():
    rows = [convo(0, turns=2)]
    noisy = evaluation_chat.perturb_rows(rows, "case", seed=1, share=0.5)
    assert noisy == evaluation_chat.perturb_rows(rows, "case", seed=1, share=0.5)
    for before, after in zip(rows[0]["messages"], noisy[0]["messages"]):
        if before["role"] == "user":
            assert after["content"].lower() == before["content"].lower()
        else:
            assert after == before
    assert any(a != b for a, b in zip(rows[0]["messages"], noisy[0]["messages"]))
    with pytest.raises(ConfigError, match="evaluate.robustness_ops"):  # the config names the usable ops
        load_config(overrides={"evaluate.robustness_ops": ["shout"]})


def test_test_rows_seeded_subsample(reports):
    cfg = load_config("params/smoke.yaml", {"evaluate.max_examples": 3})
    run = runs.create_run(cfg)
    data.write_jsonl(run.data / "test.jsonl", [convo(i) for i in range(10)])
    first = [r["id"] for r in evaluation.test_rows(run, cfg)]
    assert len(first) == 3 and first == [r["id"] for r in evaluation.test_rows(run, cfg)]


# ---------------------------------------------------------------- classification

LABELS = ["neg", "pos"]
TRAIN = [{"id": f"t{i}", "text": t, "label": l} for i, (t, l) in enumerate(
    [("awful delay again", "neg"), ("terrible service awful", "neg"), ("lost my bag, awful", "neg"),
     ("great crew, thanks", "pos"), ("great flight, lovely crew", "pos"), ("lovely staff, great", "pos")])]


def test_tfidf_baseline_learns_words_and_aligns_columns():
    probs = evaluation_classification.tfidf_baseline(TRAIN, ["awful awful", "great lovely"], ["neg", "pos", "meh"], seed=0)
    assert probs.shape == (2, 3) and list(probs.argmax(1)) == [0, 1]
    assert (probs[:, 2] == 0).all()  # a label the baseline never saw gets no probability


def test_summary_and_per_class_by_hand():
    y = np.array([0, 0, 1, 1])
    tuned = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])  # all right
    base = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])  # one negative called positive
    summary = evaluation_classification.summary_table(y, {"tuned": tuned, "baseline": base}, resamples=100, seed=0).set_index("model")
    assert summary.loc["tuned", "accuracy"] == 1.0 and summary.loc["tuned", "accuracy_ci"] == "1.000 – 1.000"
    assert summary.loc["baseline", "accuracy"] == 0.75
    head = evaluation_classification.headline(summary.reset_index())
    assert head["accuracy"] == 1.0 and head["baseline_accuracy"] == 0.75 and head["examples"] == 4
    per = evaluation_classification.per_class_table(y, {"baseline": base}, LABELS).set_index("class")
    # neg: P = 1/1, R = 1/2; pos: P = 2/3, R = 1.
    assert per.loc["neg", "recall"] == 0.5 and per.loc["pos", "precision"] == pytest.approx(0.667, abs=1e-3)


def test_worst_misclassified_most_confident_first():
    rows = [{"id": str(i), "text": f"t{i}", "label": "neg"} for i in range(3)]
    probs = np.array([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2]])
    worst = evaluation_classification.worst_misclassified(rows, np.zeros(3, int), probs, LABELS, k=5)
    assert list(worst["id"]) == ["1", "0"] and list(worst["confidence"]) == [0.9, 0.6]


def test_label_ids_and_prediction_rows():
    rows = [{"id": "a", "text": "x", "label": "pos"}]
    assert list(classification.label_ids(rows, LABELS)) == [1]
    with pytest.raises(ValueError, match="not among the model's labels"):
        classification.label_ids([{"id": "b", "text": "y", "label": "meh"}], LABELS)
    rec = evaluation_classification.prediction_rows(rows, {"tuned": np.array([[0.3, 0.7]]), "baseline": np.array([[0.6, 0.4]])}, LABELS)[0]
    assert (rec["predicted"], rec["confidence"], rec["baseline_predicted"]) == ("pos", 0.7, "neg")


def test_figures_draw_one_panel_per_model():
    y = np.array([0, 1, 0, 1])
    probs = {"tuned": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), "baseline": np.full((4, 2), 0.5)}
    for fig in (evaluation_classification.confusion_figure(y, probs, LABELS), evaluation_classification.roc_figure(y, probs, LABELS),
                evaluation_classification.pr_figure(y, probs, LABELS)):
        assert [ax.get_title().split(" ")[0] for ax in fig.axes if ax.get_title()] == ["tuned", "baseline"]
    legend = [t.get_text() for t in evaluation_classification.calibration_figure(y, probs).axes[0].get_legend().get_texts()]
    # Confidences .9 .8 .6 .7, each alone in its bin and right: gaps .1 .2 .4 .3, mean 0.25.
    assert legend[1] == "tuned (ECE 0.250)"


def test_answer_only_scoring_equals_full_logits():
    """The head applied at labelled positions only gives the NLLs of the model's full logits."""
    import torch

    from helpers import chat, inference, metrics, models
    from helpers.config import load_config

    cfg = load_config()
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()
    convs = [[{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
             [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]]
    enc = [chat.encode(tok, m, 64) for m in convs]
    width = max(len(e.input_ids) for e in enc)
    ids = torch.tensor([e.input_ids + [tok.pad_token_id] * (width - len(e.input_ids)) for e in enc])
    labels = torch.tensor([e.labels + [chat.IGNORE] * (width - len(e.labels)) for e in enc])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in enc])
    with torch.no_grad():
        nll = inference.labelled_nll(model, labels, input_ids=ids, attention_mask=mask)
        fast = nll.split([e.n_loss_tokens for e in enc])
        full = metrics.token_nlls(model(input_ids=ids, attention_mask=mask).logits, labels, chat.IGNORE)
    assert len(nll) == sum(e.n_loss_tokens for e in enc)
    for a, b in zip(fast, full):
        assert torch.allclose(a, b, atol=1e-4)
