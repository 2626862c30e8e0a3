"""Plain verdicts on a run, each with the params keys to change: did tuning help, and was the
training too short, overfitting, or unstable. Pure functions over metrics.json and the Trainer's
log history (model/log_history.json); the report's headline and notebook 06 show them.

The rules, one function each:
- helped: chat, the 95% bootstrap interval of the test perplexity change excludes 0;
  classification, the tuned model's macro F1 interval lies above the baseline's (no overlap).
  Otherwise "no clear gain" (or "worse") over the base model / the baseline.
- under-trained: validation loss still falling at the last evaluation (no early stop).
- overfitting: validation loss rose after its best evaluation while the training loss fell.
- learning rate too high: a NaN / infinite loss, or a training loss spike (over SPIKE times the
  median of the losses logged before it).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal


# A validation loss at least this much (relative) below the one before counts as still falling:
# evaluation losses of the same model differ by less than 0.1% between reruns.
STILL_FALLING = 0.001
# Rising: the last validation loss this much (relative) above the best.
RISING = 0.02
# A spike: a logged training loss over SPIKE times the median of the earlier ones (after MIN_LOGS):
# per-batch losses of small batches vary by up to ~1.5x, a learning rate too high jumps 2x and more.
SPIKE = 2.0
MIN_LOGS = 3


@dataclass(frozen=True)
class Verdict:
    """One finding: what it is, good / warn / bad, a plain sentence, and the params keys to change."""

    kind: Literal["helped", "no_gain", "worse", "under_trained", "overfitting", "lr_too_high"]
    level: Literal["good", "warn", "bad"]
    text: str
    keys: list[str] = field(default_factory=list)


def _steps_keys() -> list[str]:
    """The params keys that set how long training runs."""
    return ["tune.time_budget_minutes", "tune.epochs", "tune.max_steps"]


def _finite(x: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------- did tuning help

def tuning_helped(evaluate: dict[str, Any]) -> Verdict | None:
    """Chat: the perplexity change's interval; classification: tuned vs baseline macro F1 intervals."""
    if "perplexity_change_ci" in evaluate:
        lo, hi = evaluate["perplexity_change_ci"]
        pct = evaluate.get("perplexity_change_pct", 0.0)
        what = f"test perplexity {pct:+.1f}% (95% CI {lo:+.1f}% to {hi:+.1f}%)"
        if hi < 0:
            return Verdict("helped", "good", f"Tuning helped: {what}; the interval excludes 0.")
        if lo > 0:
            return Verdict("worse", "bad", f"Tuning made the model worse than the base model: {what}. Lower the "
                           f"learning rate or train fewer steps.", ["tune.learning_rate", *_steps_keys()])
        return Verdict("no_gain", "warn", f"No clear gain over the base model: {what}; the interval includes 0. "
                       f"Train longer, or add data.", [*_steps_keys(), "tune.learning_rate", "data.source"])
    if "macro_f1_ci" in evaluate and "baseline_macro_f1_ci" in evaluate:
        (lo, hi), (blo, bhi) = evaluate["macro_f1_ci"], evaluate["baseline_macro_f1_ci"]
        what = (f"macro F1 {evaluate['macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}) vs the TF-IDF baseline's "
                f"{evaluate['baseline_macro_f1']:.3f} ({blo:.3f}-{bhi:.3f})")
        if "accuracy_ci" in evaluate and "baseline_accuracy_ci" in evaluate:
            what += (f"; accuracy {evaluate['accuracy']:.3f} ({evaluate['accuracy_ci'][0]:.3f}-"
                     f"{evaluate['accuracy_ci'][1]:.3f}) vs {evaluate['baseline_accuracy']:.3f}")
        if lo > bhi:
            return Verdict("helped", "good", f"The tuned classifier beats the baseline: {what}; the intervals do "
                           f"not overlap.")
        if hi < blo:
            return Verdict("worse", "bad", f"The baseline beats the tuned classifier: {what}. Train longer or with a "
                           f"higher learning rate, or try tune.method: full.",
                           [*_steps_keys(), "tune.learning_rate", "tune.method"])
        return Verdict("no_gain", "warn", f"No clear gain over the baseline: {what}; the intervals overlap. Train "
                       f"longer, or add data.", [*_steps_keys(), "tune.learning_rate", "data.source"])
    return None


# ---------------------------------------------------------------- the loss curves

def _evals(history: list[dict]) -> list[tuple[int, float]]:
    """(step, validation loss) of each evaluation, in step order."""
    return sorted((h["step"], h["eval_loss"]) for h in history if "eval_loss" in h)


def _train_losses(history: list[dict]) -> list[tuple[int, float]]:
    """(step, training loss) of each logging step, in step order."""
    return sorted((h["step"], h["loss"]) for h in history if "loss" in h)


def under_trained(history: list[dict], tune: dict[str, Any]) -> Verdict | None:
    """Validation loss still falling at the last evaluation (and no early stop): more steps would help."""
    evals = _evals(history)
    if len(evals) < 2 or tune.get("stopped_early") or not all(_finite(v) for _, v in evals):
        return None
    (_, prev), (last_step, last) = evals[-2], evals[-1]
    if last >= prev * (1 - STILL_FALLING):
        return None
    more = ""
    steps, seconds = tune.get("steps"), tune.get("step_seconds")
    done = (steps or 0) - (tune.get("resumed_from_step") or 0)
    members = (tune.get("ensemble") or {}).get("members", 1)  # each member trains the steps again
    if steps and seconds and done > 0:
        each = f" for each of the {members} ensemble members" if members > 1 else ""
        more = (f" As many steps again ({steps}){each} would take about {seconds / done * steps * members / 60:.1f} "
                f"more minutes here.")
    return Verdict("under_trained", "warn", f"Under-trained: the validation loss was still falling at the last "
                   f"evaluation ({prev:.3f} -> {last:.3f} at step {last_step}), so more training should help.{more}",
                   _steps_keys())


def overfitting(history: list[dict]) -> Verdict | None:
    """Validation loss rising after its best evaluation while the training loss kept falling."""
    evals = _evals(history)
    if len(evals) < 3 or not all(_finite(v) for _, v in evals):
        return None
    best_step, best = min(evals, key=lambda e: e[1])
    last_step, last = evals[-1]
    if best_step == last_step or last <= best * (1 + RISING):
        return None
    train = _train_losses(history)
    before = [v for s, v in train if s <= best_step]
    after = [v for s, v in train if s > best_step]
    if not before or not after or statistics.mean(after) >= statistics.mean(before[-len(after):]):
        return None
    return Verdict("overfitting", "warn", f"Overfitting: the validation loss rose from {best:.3f} (step {best_step}) to "
                   f"{last:.3f} (step {last_step}) while the training loss kept falling. model/final is the best "
                   f"checkpoint; train fewer steps, regularize more, or add data.",
                   ["tune.early_stopping_patience", *_steps_keys(), "tune.weight_decay", "tune.lora.dropout",
                    "augment.ratio"])


def lr_too_high(history: list[dict]) -> Verdict | None:
    """A NaN / infinite loss, or a training loss spike: the learning rate is likely too high."""
    bad = [h["step"] for h in history for k in ("loss", "eval_loss", "grad_norm") if k in h and not _finite(h[k])]
    keys = ["tune.learning_rate", "tune.warmup_ratio"]
    if bad:
        return Verdict("lr_too_high", "bad", f"The loss became NaN or infinite (first at step {min(bad)}): the "
                       f"learning rate is likely too high. Lower it (e.g. halve it) or warm up longer.", keys)
    train = _train_losses(history)
    for i in range(MIN_LOGS, len(train)):
        ref = statistics.median(v for _, v in train[:i])
        if train[i][1] > SPIKE * ref:
            return Verdict("lr_too_high", "warn", f"The training loss spiked to {train[i][1]:.3f} at step "
                           f"{train[i][0]}, over {SPIKE:g}x the median before it ({ref:.3f}): the learning rate may "
                           f"be too high. Lower it or warm up longer.", keys)
    return None


def for_run(metrics: dict[str, Any], history: list[dict]) -> list[Verdict]:
    """Every verdict that applies to a run, the answer to "did it help" first."""
    found = [tuning_helped(metrics.get("evaluate", {})), lr_too_high(history),
             under_trained(history, metrics.get("tune", {})), overfitting(history)]
    return [v for v in found if v is not None]
