"""Engine: the training clock. How long one optimizer step of this very training path takes on
this machine (timed, not guessed), and how many steps a time budget buys.

    timing = measure(cfg, train_rows, val_rows)       seconds per token, per step and per validation row
    plan   = plan_budget(cfg, timing, n_train, n_val)  tune.time_budget_minutes -> steps, evaluations

Stage 01 calls both (before any cleaning, on the loaded rows) and writes the plan's steps into
the run's config.yaml, so stage 04, a resumed run and a reused one train the steps planned here.
The small-data floor (tune.min_steps) needs no clock: `training.planned_steps` applies it.
"""
from __future__ import annotations

import gc
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import adapters, tasks, training
from .config import Config, ConfigError, apply_overrides

# Optimizer steps timed after the first one (its one-time setup is not a step's cost): at least
# TIMED_STEPS, and more up to MAX_TIMED_STEPS while they add up to less than TIMED_SECONDS. On a busy
# machine one step of the smoke classifier took 1.4 to 2.4 s: the median of 3 fast steps is noise,
# while 3 steps of a big chat batch (20-50 s each here) are already a minute or more.
TIMED_STEPS, MAX_TIMED_STEPS, TIMED_SECONDS = 3, 10, 15.0
# A step's time follows its tokens, and steps of long, uneven chats hold very different token counts
# (three timed steps of 8 multi-turn chats took 50.9, 17.3 and 27.7 s here). So the rate is timed per
# token, and a step's time is that rate times the data's mean tokens per step (from up to LENGTH_ROWS
# rows). Until TIMED_STEPS rates lie within AGREE of their median (a busy machine slows some steps),
# more steps are timed, up to MAX_TIMED_STEPS and AGREE_SECONDS in all.
LENGTH_ROWS, AGREE, AGREE_SECONDS = 2000, 1.25, 60.0


class StepClock(training.StepTimer):
    """The engine's step timer (every optimizer step's seconds and tokens), stopping the training once
    the timed steps (all but the first) are enough and their per-token rates agree."""

    def __init__(self, steps: int = TIMED_STEPS, seconds: float = TIMED_SECONDS):
        super().__init__()
        self.steps, self.enough = steps, seconds
        self.trainer = None  # set once the trainer exists: its tokens_seen counts each step's tokens
        self.tokens: list[int] = []
        self._seen = 0

    def rates(self) -> list[float]:
        """Seconds per token of each timed step."""
        return [s / t for s, t in zip(self.each[1:], self.tokens[1:]) if t]

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        seen = self.trainer.tokens_seen if self.trainer is not None else 0
        self.tokens.append(seen - self._seen)
        self._seen = seen
        timed, rates, agree = self.each[1:], self.rates(), True
        if rates:  # (no token counts: a step's seconds alone decide)
            mid = statistics.median(rates)
            agree = sum(mid / AGREE <= r <= mid * AGREE for r in rates) >= min(self.steps, len(rates))
        if len(timed) >= self.steps and sum(timed) >= self.enough and (agree or sum(timed) >= AGREE_SECONDS):
            control.should_training_stop = True


def measure(cfg: Config, train_rows: list[dict], val_rows: list[dict], steps: int = TIMED_STEPS,
            most: int = MAX_TIMED_STEPS) -> dict[str, Any]:
    """Time `steps` to `most` real optimizer steps (after one untimed) of the run's own training path: the same
    model, adapters, precision, packing and batch size as stage 04, on batches drawn from train_rows;
    then one validation batch drawn from val_rows. Rows must fit model.max_length.

    seconds_per_step is the median seconds per token of the timed steps times the data's mean tokens
    per step (LENGTH_ROWS rows encoded as training encodes them), so a few uneven steps still give the
    rate of an average one; seconds_per_validation_row likewise (the validation batch's seconds per
    token times the mean tokens per row)."""
    if not train_rows:
        raise ConfigError("the step timing needs at least one row that fits model.max_length")
    rng = random.Random(cfg.experiment.seed)
    per_step = cfg.tune.batch_size * cfg.tune.grad_accum
    sample = [rng.choice(train_rows) for _ in range(per_step * (most + 1))]  # with replacement: tiny data too
    checks = rng.sample(val_rows or train_rows, min(len(val_rows or train_rows), 2 * cfg.tune.batch_size))
    for_lengths = rng.sample(train_rows, min(len(train_rows), LENGTH_ROWS))
    timing_cfg = apply_overrides(cfg, {"tune.max_steps": most + 1, "tune.warmup_ratio": 0.0,
                                       "tune.eval_steps": 10**6, "tune.save_steps": 10**6,
                                       "tune.logging_steps": 10**6, "tune.early_stopping_patience": None})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunebook-timing-") as out:
        prepared = training.prepare(timing_cfg, sample, [], Path(out), resume=False)
        model = adapters.build_model(timing_cfg, prepared.labels)
        clock = StepClock(min(steps, most))
        trainer = training.make_trainer(timing_cfg, prepared, model,
                                        training.arguments(timing_cfg, prepared, model, progress=False), [clock])
        clock.trainer = trainer
        trainer.train()
        task = tasks.for_config(cfg)

        def known(rows):  # the sample may lack a rare label: rows of other labels are left out
            return [r for r in rows if prepared.labels is None or r["label"] in prepared.labels] or sample[:1]

        encoded = task.encode(prepared.tokenizer, known(for_lengths), prepared.labels, cfg.model.max_length, "train")
        row_tokens = statistics.fmean(len(ids) for ids in encoded["input_ids"])
        val = task.encode(prepared.tokenizer, known(checks), prepared.labels, cfg.model.max_length,
                          "validation")  # one evaluation batch
        start = time.perf_counter()  # the training steps warmed the model up
        trainer.evaluate(eval_dataset=val)
        val_seconds = time.perf_counter() - start
        val_tokens = sum(len(ids) for ids in val["input_ids"])
        del trainer, model
        clock.trainer = None
        gc.collect()
    timed = clock.each[1:] or clock.each
    rates = clock.rates()
    data_tokens = row_tokens * per_step
    per_token = statistics.median(rates) if rates else None
    return {"seconds_per_step": round(per_token * data_tokens if per_token else statistics.median(timed), 4),
            "seconds_per_token": round(per_token, 7) if per_token else None,
            "data_tokens_per_step": round(data_tokens, 1), "steps_timed": len(timed),
            "step_seconds_each": [round(s, 3) for s in clock.each], "step_tokens_each": clock.tokens,
            # per token too: one batch of uneven chats is not an average row
            "seconds_per_validation_row": round(val_seconds / val_tokens * row_tokens, 5),
            "timing_seconds": round(time.perf_counter() - started, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


# At most this share of a budget goes to validation passes: on a slow machine with a big validation
# split one pass can take minutes, and evaluating at the usual cadence would leave little to train.
EVAL_SHARE = 0.25
# The smallest validation sample a budget shrinks the in-training validation to (tune.eval_rows):
# 100 chats are thousands of loss tokens, enough to see the loss fall; a bigger floor would let a slow
# machine with a short budget spend most of it validating.
MIN_EVAL_ROWS = 100


def plan_budget(cfg: Config, timing: dict[str, Any], n_train: int, n_val: int) -> dict[str, Any]:
    """The optimizer steps that fit tune.time_budget_minutes: each step at the measured rate, plus a
    validation pass at step 0 and every eval_steps. When that cadence gives fewer than two evaluations
    (early stopping and the best checkpoint need them), there are four instead; when it would spend
    more than EVAL_SHARE of the budget validating, fewer. Checkpoints then come with the evaluations.
    When even two whole validation passes exceed that share (a big validation split on a slow
    machine), training validates on a seeded sample of the split (tune.eval_rows) sized for four."""
    t = cfg.tune
    budget = t.time_budget_minutes * 60
    per_row = timing["seconds_per_validation_row"]
    n_val = min(n_val, t.eval_rows or n_val)
    eval_rows = t.eval_rows
    if per_row and 2 * per_row * n_val > EVAL_SHARE * budget:
        # Two whole passes (step 0 and one more) would already take more than the validation share:
        # validate on a seeded sample small enough for four passes (at least MIN_EVAL_ROWS rows).
        n_val = eval_rows = min(n_val, max(MIN_EVAL_ROWS, math.floor(EVAL_SHARE * budget / 4 / per_row)))
    step, val = timing["seconds_per_step"], per_row * n_val

    def steps_with(evals: int) -> int:  # steps that fit beside a step-0 pass and `evals` more
        return math.floor((budget - (1 + evals) * val) / step)

    every, save = t.eval_steps, t.save_steps
    steps = math.floor((budget - val) / (step + val / every))
    affordable = max(1, math.floor(EVAL_SHARE * budget / val) - 1) if val else 4
    evals = steps // every
    if steps >= 1 and (evals < 2 or evals > affordable):
        evals = min(4, affordable) if evals < 2 else affordable
        steps = steps_with(evals)
        every = save = max(1, steps // evals)
    if steps < 1:
        need = (step + 2 * val) / 60
        raise ConfigError(f"tune.time_budget_minutes: {t.time_budget_minutes} min buys no step here (a step takes "
                          f"{step:.2f} s and a validation pass {val:.1f} s); give at least {math.ceil(need)}, "
                          f"or set tune.max_steps instead")
    per_step = t.batch_size * t.grad_accum
    evaluations = 1 + steps // every if n_val else 0
    return {"time_budget_minutes": t.time_budget_minutes, "max_steps": steps, "eval_steps": every,
            "save_steps": save, "eval_rows": eval_rows, "epochs": round(steps * per_step / max(n_train, 1), 2),
            "evaluations": evaluations, "seconds_per_step": step, "validation_pass_seconds": round(val, 1),
            "planned_minutes": round((steps * step + evaluations * val) / 60, 2)}


def plan_overrides(plan: dict[str, Any]) -> dict[str, int | None]:
    """The config keys a plan sets (written into the run's config.yaml by stage 01)."""
    return {f"tune.{k}": plan[k] for k in ("max_steps", "eval_steps", "save_steps", "eval_rows")}
