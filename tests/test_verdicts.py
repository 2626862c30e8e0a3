"""helpers.verdicts on synthetic log histories and metrics: each rule fires where it should, and only there."""
import pytest

from helpers import verdicts


def history(evals, train=()):
    """A Trainer log history from (step, eval_loss) and (step, loss) pairs."""
    return [{"step": s, "eval_loss": v} for s, v in evals] + [{"step": s, "loss": v} for s, v in train]


@pytest.mark.parametrize("ci,kind,level", [([-55.0, -45.0], "helped", "good"), ([-20.0, 3.0], "no_gain", "warn"),
                                           ([2.0, 9.0], "worse", "bad")])
def test_chat_verdict_follows_the_perplexity_change_interval(ci, kind, level):
    v = verdicts.tuning_helped({"perplexity_change_pct": sum(ci) / 2, "perplexity_change_ci": ci})
    assert (v.kind, v.level) == (kind, level)
    assert f"95% CI {ci[0]:+.1f}% to {ci[1]:+.1f}%" in v.text
    assert ("tune.learning_rate" in v.keys) == (kind != "helped")


def test_classification_verdict_compares_tuned_and_baseline_intervals():
    ev = {"macro_f1": 0.78, "macro_f1_ci": [0.75, 0.81], "baseline_macro_f1": 0.66, "baseline_macro_f1_ci": [0.62, 0.70],
          "accuracy": 0.84, "accuracy_ci": [0.82, 0.86], "baseline_accuracy": 0.76, "baseline_accuracy_ci": [0.7, 0.8]}
    v = verdicts.tuning_helped(ev)
    assert v.kind == "helped" and "0.780 (95% CI 0.750-0.810)" in v.text and "accuracy 0.840" in v.text
    assert verdicts.tuning_helped({**ev, "baseline_macro_f1_ci": [0.70, 0.76]}).kind == "no_gain"
    assert verdicts.tuning_helped({**ev, "baseline_macro_f1_ci": [0.82, 0.9]}).kind == "worse"
    assert verdicts.tuning_helped({}) is None


def test_under_trained_when_validation_loss_still_falls_at_the_end():
    h = history([(0, 3.3), (5, 3.1), (10, 2.9)])
    v = verdicts.under_trained(h, {"steps": 10, "step_seconds": 30.0, "stopped_early": False})
    assert v.kind == "under_trained" and "3.100 -> 2.900 at step 10" in v.text
    assert "about 0.5 more minutes" in v.text and "tune.max_steps" in v.keys
    three = verdicts.under_trained(h, {"steps": 10, "step_seconds": 30.0, "ensemble": {"members": 3}})
    assert "(10) for each of the 3 ensemble members would take about 1.5 more minutes" in three.text
    assert verdicts.under_trained(history([(0, 3.3), (5, 3.1), (10, 3.1)]), {}) is None  # flat: not falling
    assert verdicts.under_trained(h, {"stopped_early": True}) is None
    assert verdicts.under_trained(history([(0, 3.3)]), {}) is None  # one evaluation says nothing


def test_overfitting_when_validation_rises_after_its_best_while_training_falls():
    train = [(s, 2.0 - 0.1 * s) for s in range(1, 13)]
    h = history([(0, 3.0), (4, 2.5), (8, 2.7), (12, 2.9)], train)
    v = verdicts.overfitting(h)
    assert v.kind == "overfitting" and "from 2.500 (step 4) to 2.900 (step 12)" in v.text
    assert "tune.early_stopping_patience" in v.keys
    assert verdicts.overfitting(history([(0, 3.0), (4, 2.5), (8, 2.51), (12, 2.52)], train)) is None  # within 2%
    flat = [(s, 1.5) for s in range(1, 13)]
    assert verdicts.overfitting(history([(0, 3.0), (4, 2.5), (8, 2.7), (12, 2.9)], flat)) is None  # train not falling


def test_learning_rate_too_high_on_nan_or_a_spike():
    nan = verdicts.lr_too_high(history([(4, float("nan"))], [(1, 2.0), (2, 1.9)]))
    assert (nan.kind, nan.level) == ("lr_too_high", "bad") and "step 4" in nan.text
    spike = verdicts.lr_too_high(history([], [(1, 2.0), (2, 1.8), (3, 1.9), (4, 5.0), (5, 1.7)]))
    assert spike.level == "warn" and "spiked to 5.000 at step 4" in spike.text and spike.keys[0] == "tune.learning_rate"
    assert verdicts.lr_too_high(history([], [(1, 2.0), (2, 1.8), (3, 1.9), (4, 2.6), (5, 1.7)])) is None  # < 2x


def test_for_run_puts_the_answer_first_and_skips_what_does_not_apply():
    metrics = {"evaluate": {"perplexity_change_pct": -50.0, "perplexity_change_ci": [-55.0, -45.0]},
               "tune": {"steps": 10, "step_seconds": 30.0, "stopped_early": False}}
    found = verdicts.for_run(metrics, history([(0, 3.3), (5, 3.1), (10, 2.9)], [(1, 2.0), (5, 1.9), (10, 1.8)]))
    assert [v.kind for v in found] == ["helped", "under_trained"]
    assert verdicts.for_run({}, []) == []
