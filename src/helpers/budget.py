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

# Optimizer steps timed after the warm-up ones: at least TIMED_STEPS, and more up to MAX_TIMED_STEPS
# while they add up to less than TIMED_SECONDS. On a busy machine one step of the smoke classifier took
# 1.4 to 2.4 s: the median of 3 fast steps is noise, while 3 steps of a big chat batch (20-50 s each
# here) are already a minute or more. The first step is never timed (one-time setup), nor the next
# ones until WARMUP_SECONDS have passed (at most WARMUP_STEPS in all): a fresh process's first steps
# of new batch shapes run slower (quick classifier steps here went from 1.8 to 1.4 ms a token over the
# first six steps, and 04 then ran at 1.35).
TIMED_STEPS, MAX_TIMED_STEPS, TIMED_SECONDS = 3, 10, 15.0
WARMUP_STEPS, WARMUP_SECONDS = 5, 8.0
# A step's time follows the tokens it computes, and steps differ in them: batches of long, uneven chats
# (three timed steps of 8 multi-turn chats took 50.9, 17.3 and 27.7 s here), and padded batches, whose
# padding depends on how the Trainer groups rows by length (a few timed steps group a few hundred rows,
# a real epoch thousands: on 23.5k tweets the timed steps computed 40% more padding than stage 04's).
# So the rate is timed per computed token (padding included), and a step's time is that rate times
# the tokens an average step of stage 04 computes: its batches simulated on up to LENGTH_ROWS rows of
# the data, grouped by length as the Trainer groups them. Until TIMED_STEPS rates lie within AGREE of
# their median (a busy machine slows some steps), more steps are timed, up to MAX_TIMED_STEPS and
# AGREE_SECONDS in all.
LENGTH_ROWS, AGREE, AGREE_SECONDS = 2000, 1.25, 60.0
# The validation batch timed: drawn from VAL_POOL batches' worth of rows, the draw (of VAL_DRAWS)
# whose tokens are nearest an average batch's.
VAL_POOL, VAL_DRAWS = 10, 50


class StepClock(training.StepTimer):
    """The engine's step timer (every optimizer step's seconds and computed tokens), stopping the
    training once the timed steps (after the warm-up) are enough and their per-token rates agree."""

    def __init__(self, steps: int = TIMED_STEPS, seconds: float = TIMED_SECONDS, most: int = MAX_TIMED_STEPS):
        super().__init__()
        self.steps, self.enough, self.most = steps, seconds, most
        self.trainer = None  # set once the trainer exists: its computed_tokens counts each step's tokens
        self.tokens: list[int] = []
        self.warmup = 0  # untimed steps, settled once they are done
        self._seen = 0

    @property
    def timed(self) -> list[float]:
        return self.each[self.warmup:] if self.warmup else []

    def rates(self) -> list[float]:
        """Seconds per computed token of each timed step."""
        return [s / t for s, t in zip(self.timed, self.tokens[self.warmup:]) if t]

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        seen = self.trainer.computed_tokens if self.trainer is not None else 0
        self.tokens.append(seen - self._seen)
        self._seen = seen
        if not self.warmup:
            if len(self.each) >= WARMUP_STEPS or sum(self.each) >= WARMUP_SECONDS:
                self.warmup = len(self.each)
            return
        timed, rates, agree = self.timed, self.rates(), True
        if rates:  # (no token counts: a step's seconds alone decide)
            mid = statistics.median(rates)
            agree = sum(mid / AGREE <= r <= mid * AGREE for r in rates) >= min(self.steps, len(rates))
        enough = len(timed) >= self.steps and sum(timed) >= self.enough and (agree or sum(timed) >= AGREE_SECONDS)
        if enough or len(timed) >= self.most:
            control.should_training_stop = True


def measure(cfg: Config, train_rows: list[dict], val_rows: list[dict], steps: int = TIMED_STEPS,
            most: int = MAX_TIMED_STEPS) -> dict[str, Any]:
    """Time `steps` to `most` real optimizer steps (after the warm-up) of the run's own training path: the same
    model, adapters, precision, packing and batch size as stage 04, on batches drawn from train_rows;
    then one validation batch drawn from val_rows. Rows must fit model.max_length.

    seconds_per_step is the median seconds per computed token of the timed steps times the tokens an
    average step of stage 04 computes (`step_tokens` on LENGTH_ROWS rows encoded as training encodes
    them), so a few uneven steps still give the rate of an average one; seconds_per_validation_row is
    likewise the validation batch's seconds per computed token times a validation row's tokens."""
    if not train_rows:
        raise ConfigError("the step timing needs at least one row that fits model.max_length")
    rng = random.Random(cfg.experiment.seed)
    per_step = cfg.tune.batch_size * cfg.tune.grad_accum
    # with replacement: tiny data too
    sample = [rng.choice(train_rows) for _ in range(per_step * (most + WARMUP_STEPS))]
    size = training.eval_batch_size(cfg)
    pool = rng.sample(val_rows or train_rows, min(len(val_rows or train_rows), VAL_POOL * size))
    for_lengths = rng.sample(train_rows, min(len(train_rows), LENGTH_ROWS))
    timing_cfg = apply_overrides(cfg, {"tune.max_steps": most + WARMUP_STEPS, "tune.warmup_ratio": 0.0,
                                       "tune.eval_steps": 10**6, "tune.save_steps": 10**6,
                                       "tune.logging_steps": 10**6, "tune.early_stopping_patience": None})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunebook-timing-") as out:
        prepared = training.prepare(timing_cfg, sample, [], Path(out), resume=False)
        model = adapters.build_model(timing_cfg, prepared.labels)
        clock = StepClock(min(steps, most), most=most)
        trainer = training.make_trainer(timing_cfg, prepared, model,
                                        training.arguments(timing_cfg, prepared, model, progress=False), [clock])
        clock.trainer = trainer
        trainer.train()
        task = tasks.for_config(cfg)

        def known(rows):  # the sample may lack a rare label: rows of other labels are left out
            return [r for r in rows if prepared.labels is None or r["label"] in prepared.labels] or sample[:1]

        encoded = task.encode(prepared.tokenizer, known(for_lengths), prepared.labels, cfg.model.max_length, "train")
        lengths = [len(ids) for ids in encoded["input_ids"]]
        row_tokens = statistics.fmean(lengths)
        packed = task.packs(cfg, model.config.model_type)
        # The validation batch to time: of VAL_DRAWS seeded draws from the pool, the one that computes
        # nearest the tokens of an average validation batch (a packed batch's cost per token grows
        # with its length: 16 chats ran 7.7 ms a token at 2,053 tokens, 9.0 at 2,944).
        pooled = task.encode(prepared.tokenizer, known(pool), prepared.labels, cfg.model.max_length, "validation")
        pool_lengths = [len(ids) for ids in pooled["input_ids"]]
        per_row = row_tokens_validated(lengths, cfg, packed)
        draws = [rng.sample(range(len(pool_lengths)), min(size, len(pool_lengths))) for _ in range(VAL_DRAWS)]
        pick = min(draws, key=lambda d: abs(batch_tokens([pool_lengths[i] for i in d], size, packed)
                                            - per_row * len(d)))
        val = pooled.select(pick)
        start = time.perf_counter()  # the training steps warmed the model up
        trainer.evaluate(eval_dataset=val)
        val_seconds = time.perf_counter() - start
        val_tokens = batch_tokens([pool_lengths[i] for i in pick], size, packed)  # computed, padding included
        del trainer, model
        clock.trainer = None
        gc.collect()
    timed = clock.timed or clock.each
    rates = clock.rates()
    data_tokens = step_tokens(lengths, cfg, packed, len(train_rows))
    per_token = statistics.median(rates) if rates else None
    return {"seconds_per_step": round(per_token * data_tokens if per_token else statistics.median(timed), 4),
            "seconds_per_token": round(per_token, 10) if per_token else None,
            "data_tokens_per_step": round(data_tokens, 1), "mean_row_tokens": round(row_tokens, 1),
            "warmup_steps": clock.warmup, "steps_timed": len(timed),
            # 10 µs: a smoke step can take 20 ms, and the rates must be recomputable from these
            "step_seconds_each": [round(s, 5) for s in clock.each], "step_tokens_each": clock.tokens,
            # per computed token too: one batch of uneven chats is not an average row
            "seconds_per_validation_row": round(val_seconds / val_tokens * per_row, 5),
            "validation_batch_tokens": val_tokens,
            "timing_seconds": round(time.perf_counter() - started, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def step_tokens(lengths: list[int], cfg: Config, packed: bool, n_train: int) -> float:
    """The tokens an average optimizer step of stage 04 computes, padding included, for rows of these
    token lengths: packed batches compute their rows' tokens; padded ones batch_size times their longest
    row, in the batches the Trainer's group_by_length sampler makes from n_train rows (megabatches of up
    to 50 batches, each sorted by length), simulated on the lengths."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    t = cfg.tune
    if packed:
        return statistics.fmean(lengths) * t.batch_size * t.grad_accum
    mult = max(1, min(n_train // (t.batch_size * 4), 50))
    order = get_length_grouped_indices(lengths, t.batch_size, mult,
                                       generator=torch.Generator().manual_seed(cfg.experiment.seed))
    return batch_tokens([lengths[i] for i in order], t.batch_size, packed) * t.grad_accum


def row_tokens_validated(lengths: list[int], cfg: Config, packed: bool) -> float:
    """The tokens a validation pass computes per row, padding included: its batches (twice the training
    batch) come in split order, which is random, so they are simulated on the lengths shuffled."""
    shuffled = random.Random(cfg.experiment.seed).sample(lengths, len(lengths))
    size = training.eval_batch_size(cfg)
    return batch_tokens(shuffled, size, packed) / size


def batch_tokens(lengths: list[int], size: int, packed: bool) -> float:
    """The tokens a batch computes on average when rows of these lengths, in this order, are cut into
    batches of `size`: their tokens packed, or `size` times the batch's longest row padded (full batches
    only, when there is one)."""
    batches = [lengths[i:i + size] for i in range(0, len(lengths), size)]
    full = [b for b in batches if len(b) == size] or batches
    return statistics.fmean(sum(b) if packed else len(b) * max(b) for b in full)


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
    machine), training validates on a seeded sample of the split (tune.eval_rows) sized for four.
    An ensemble (tune.ensemble: N) shares the budget: the plan is one member's, for a budget / N."""
    t = cfg.tune
    budget = t.time_budget_minutes * 60 / t.ensemble
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
        share = f" for each of tune.ensemble's {t.ensemble} members" if t.ensemble > 1 else ""
        raise ConfigError(f"tune.time_budget_minutes: {t.time_budget_minutes} min buys no step here{share} (a step "
                          f"takes {step:.2f} s and a validation pass {val:.1f} s); give at least "
                          f"{math.ceil(need * t.ensemble)}, or set tune.max_steps instead")
    per_step = t.batch_size * t.grad_accum
    evaluations = 1 + steps // every if n_val else 0
    return {"time_budget_minutes": t.time_budget_minutes, "ensemble_members": t.ensemble, "max_steps": steps,
            "eval_steps": every, "save_steps": save, "eval_rows": eval_rows,
            "epochs": round(steps * per_step / max(n_train, 1), 2), "evaluations": evaluations,
            "seconds_per_step": step, "validation_pass_seconds": round(val, 1),
            "planned_minutes": round((steps * step + evaluations * val) / 60, 2)}


def plan_overrides(plan: dict[str, Any]) -> dict[str, int | None]:
    """The config keys a plan sets (written into the run's config.yaml by stage 01)."""
    return {f"tune.{k}": plan[k] for k in ("max_steps", "eval_steps", "save_steps", "eval_rows")}
