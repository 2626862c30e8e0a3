"""The training clock: timed steps of the real path, a time budget as steps, the small-data floor."""
import statistics
from types import SimpleNamespace

import pytest
import yaml

from helpers import budget, data, explore, models, paths, runs, training
from helpers.config import ConfigError, load_config

SMOKE = paths.PARAMS / "smoke.yaml"
SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"  # its ensemble of 2 halves a plan: tests say 1
TIMING = {"seconds_per_step": 0.5, "seconds_per_validation_row": 0.01}


def test_a_budget_buys_the_steps_that_fit_with_their_validations():
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 2,
                                        "tune.eval_steps": 50, "tune.save_steps": 100})
    plan = budget.plan_budget(cfg, TIMING, n_train=1000, n_val=100)  # a validation pass: 1 s
    # 120 s = steps * 0.5 + (1 + steps / 50) * 1  ->  steps = floor(119 / 0.52) = 228
    assert plan["max_steps"] == 228 and plan["eval_steps"] == 50 and plan["save_steps"] == 100
    assert plan["evaluations"] == 1 + 228 // 50
    assert plan["planned_minutes"] <= 2 and plan["epochs"] == round(228 * 16 / 1000, 2)
    assert budget.plan_overrides(plan) == {"tune.max_steps": 228, "tune.eval_steps": 50, "tune.save_steps": 100,
                                           "tune.eval_rows": None}  # whole validation passes fit


def test_a_validation_split_too_big_for_the_budget_is_sampled_for_four_passes():
    # Measured on 23.5k tweets (2026-12-03, AVX2-only EPYC): a pass over 2,352 validation rows took 101 s,
    # a step 2.15 s; in 5 minutes two whole passes left 45 steps. A sample sized for four passes in a
    # quarter of the budget: floor(75 s / 4 / 0.043 s) = 436 rows.
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 5})
    timing = {"seconds_per_step": 2.15, "seconds_per_validation_row": 0.043}
    plan = budget.plan_budget(cfg, timing, n_train=18800, n_val=2352)
    assert plan["eval_rows"] == 436 and budget.plan_overrides(plan)["tune.eval_rows"] == 436
    assert plan["evaluations"] * plan["validation_pass_seconds"] <= budget.EVAL_SHARE * 300 + 1e-9
    # smoke-sentiment validates every 4 steps: far more than 3 passes fit, so step 0 and 3 more.
    assert plan["evaluations"] == 4 and plan["max_steps"] == (300 - 4 * 436 * 0.043) // 2.15
    assert plan["planned_minutes"] <= 5
    # Never below MIN_EVAL_ROWS, and never more than the split; a user's own tune.eval_rows is kept.
    assert budget.plan_budget(cfg, {"seconds_per_step": 0.5, "seconds_per_validation_row": 0.2}, 1000, 5000
                              )["eval_rows"] == budget.MIN_EVAL_ROWS
    mine = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 5,
                                         "tune.eval_rows": 300})
    assert budget.plan_budget(mine, TIMING, 1000, 2352)["eval_rows"] == 300
    # Training takes that seeded sample, in split order, the same one every time.
    rows = [{"id": f"r{i}"} for i in range(2352)]
    sample = training.eval_sample(load_config(SMOKE_SENTIMENT, {"tune.eval_rows": 436}), rows)
    assert len(sample) == 436 and [r["id"] for r in sample] == sorted((r["id"] for r in sample), key=lambda x: int(x[1:]))
    assert sample == training.eval_sample(load_config(SMOKE_SENTIMENT, {"tune.eval_rows": 436}), rows)
    assert training.eval_sample(load_config(SMOKE_SENTIMENT), rows) == rows  # None: every row


def test_a_short_budget_evaluates_every_quarter_and_a_hopeless_one_says_how_much_is_needed():
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 0.5,
                                        "tune.eval_steps": 100, "tune.save_steps": 100})
    plan = budget.plan_budget(cfg, TIMING, n_train=1000, n_val=100)
    assert plan["max_steps"] < 200 and plan["eval_steps"] == plan["save_steps"] == plan["max_steps"] // 4
    assert plan["planned_minutes"] <= 0.5
    # A validation pass of 60 s in a 10-minute budget: the usual cadence (every 50 steps) would validate
    # 12 times, 12 of the 10 minutes; at most a quarter goes to validation: step 0 and one more.
    slow = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 10,
                                         "tune.eval_steps": 50, "tune.save_steps": 50})
    plan = budget.plan_budget(slow, {"seconds_per_step": 0.5, "seconds_per_validation_row": 0.6}, 1000, 100)
    assert plan["evaluations"] == 2 and plan["max_steps"] == (600 - 2 * 60) / 0.5 == plan["eval_steps"]
    tiny = load_config(SMOKE_SENTIMENT, {"tune.time_budget_minutes": 0.01})
    with pytest.raises(ConfigError, match=r"tune\.time_budget_minutes.*give at least"):
        budget.plan_budget(tiny, {"seconds_per_step": 0.5, "seconds_per_validation_row": 1.0}, 1000, 100)


def test_small_data_gets_min_steps_and_max_steps_or_epochs_win_otherwise():
    cfg = load_config(SMOKE, {"tune.max_steps": -1, "tune.batch_size": 8, "tune.epochs": 1})
    steps, rule = training.planned_steps(cfg, 77)  # 10 steps an epoch: one epoch learns nothing
    assert steps == 100 and rule.startswith("min_steps") and "10.0 epochs" in rule
    assert training.planned_steps(cfg, 8000) == (-1, "epochs")  # 1000 steps: the epochs stand
    assert training.planned_steps(load_config(SMOKE), 77) == (6, "max_steps")
    off = load_config(SMOKE, {"tune.max_steps": -1, "tune.min_steps": 0})
    assert training.planned_steps(off, 77) == (-1, "epochs")


def test_the_timing_runs_the_training_path_and_01_writes_the_budget_into_config_yaml(tmp_path):
    cfg = load_config(SMOKE_SENTIMENT, {"tune.max_steps": -1, "tune.ensemble": 1, "tune.time_budget_minutes": 1})
    run = runs.create_run(cfg, reports=tmp_path / "reports")
    rows = data.load(cfg).rows
    lengths = explore.token_lengths(rows, models.load_tokenizer(cfg), "classification")
    epoch = explore.epoch_tokens(lengths, cfg)
    planned, out = explore.time_training(run, cfg, rows, lengths, epoch)
    timing = out["timing"]
    # At least TIMED_STEPS after the untimed warm-up (the first step, and more until WARMUP_SECONDS);
    # more (up to MAX_TIMED_STEPS) while they are quick.
    warm = timing["warmup_steps"]
    assert 1 <= warm <= budget.WARMUP_STEPS
    assert warm == budget.WARMUP_STEPS or sum(timing["step_seconds_each"][:warm]) >= budget.WARMUP_SECONDS
    timed = timing["step_seconds_each"][warm:]
    assert budget.TIMED_STEPS <= timing["steps_timed"] == len(timed) <= budget.MAX_TIMED_STEPS
    assert sum(timed) >= budget.TIMED_SECONDS or len(timed) == budget.MAX_TIMED_STEPS
    assert timing["seconds_per_step"] > 0 and timing["seconds_per_validation_row"] > 0
    # Per token: each timed step's seconds over the tokens it computed (real batches of the data went
    # through), times the tokens an average step of 04 computes.
    tokens = timing["step_tokens_each"]
    assert len(tokens) == len(timing["step_seconds_each"]) and all(t > 0 for t in tokens)
    rate = statistics.median(s / t for s, t in zip(timed, tokens[warm:]))
    assert timing["seconds_per_token"] == pytest.approx(rate, rel=1e-3)
    assert timing["seconds_per_step"] == pytest.approx(rate * timing["data_tokens_per_step"], rel=1e-3)
    tok = models.load_tokenizer(cfg)
    mean_text = statistics.fmean(len(tok(r["text"], truncation=True, max_length=cfg.model.max_length)["input_ids"])
                                 for r in rows)
    assert timing["mean_row_tokens"] == pytest.approx(mean_text, rel=0.05)
    assert timing["data_tokens_per_step"] >= timing["mean_row_tokens"] * cfg.tune.batch_size  # + padding
    plan = out["budget"]
    assert planned.tune.max_steps == plan["max_steps"] > 0
    written = yaml.safe_load(run.config_file.read_text())
    assert written["tune"]["max_steps"] == plan["max_steps"]  # 04 reads the planned steps
    assert training.planned_steps(planned, 240) == (plan["max_steps"], "time budget")
    # No budget and no timing asked for: nothing is measured, the config is unchanged.
    quiet = load_config(SMOKE_SENTIMENT, {"explore.measure_speed": False})
    assert explore.time_training(run, quiet, rows, lengths, epoch) == (quiet, None)
    # max_steps set under a budget (a smoke profile extending a bundled file): max_steps wins, the budget
    # leaves config.yaml, and 04 names max_steps as what set the steps.
    both = load_config(SMOKE_SENTIMENT, {"explore.measure_speed": False, "tune.time_budget_minutes": 3})
    kept, out = explore.time_training(run, both, rows, lengths, epoch)
    assert out is None and kept.tune.time_budget_minutes is None and kept.tune.max_steps == 8
    assert yaml.safe_load(run.config_file.read_text())["tune"]["time_budget_minutes"] is None
    assert training.planned_steps(kept, 240) == (8, "max_steps")


def run_clock(steps: list[tuple[float, int]], monkeypatch) -> tuple[budget.StepClock, int]:
    """A StepClock fed steps of (seconds, computed tokens) until it stops the training: it and the steps run."""
    clock = budget.StepClock()
    clock.trainer = SimpleNamespace(computed_tokens=0)
    for n, (seconds, tokens) in enumerate(steps, 1):
        now = iter([0.0, seconds])
        monkeypatch.setattr(training.time, "perf_counter", lambda: next(now))
        control = SimpleNamespace(should_training_stop=False)
        clock.on_step_begin(None, None, control)
        clock.trainer.computed_tokens += tokens
        clock.on_step_end(None, None, control)
        if control.should_training_stop:
            return clock, n
    return clock, len(steps)


def test_the_clock_times_per_token_and_goes_on_while_the_rates_disagree(monkeypatch):
    """Steps of uneven chats: seconds follow tokens. The clock stops after TIMED_STEPS timed steps worth
    TIMED_SECONDS once TIMED_STEPS per-token rates lie within AGREE of their median; until then it times more."""
    steps = [(30.0, 1000), (50.9, 2900), (17.3, 1000), (27.7, 1600), (20.0, 500), (12.0, 700), (18.0, 1000)]
    clock, n = run_clock(steps, monkeypatch)
    # After 4 steps (the first one warm-up, 3 timed) the rates are 17.6, 17.3, 17.3 ms/token: they agree.
    assert n == 4 and clock.tokens == [t for _, t in steps[:4]] and clock.warmup == 1
    assert clock.rates() == pytest.approx([50.9 / 2900, 17.3 / 1000, 27.7 / 1600])
    # Quick steps: the warm-up goes on until WARMUP_SECONDS have passed, here three steps of 3 s.
    quick, _ = run_clock([(3.0, 1000), (3.0, 1000), (3.0, 1000), (2.0, 1000)], monkeypatch)
    assert quick.warmup == 3 and quick.timed == [2.0]
    # A busy machine: one step at 16 ms/token among 7 ms ones. Two rates agree after 3 timed steps, so
    # the clock times a fourth; three agree then, and the median ignores the busy step.
    busy, n = run_clock([(10.0, 1000), (7.0, 1000), (16.0, 1000), (7.0, 1000), (7.0, 1000), (7.0, 1000)], monkeypatch)
    assert n == 5 and statistics.median(busy.rates()) == pytest.approx(0.007)


def test_a_steps_tokens_are_its_rows_packed_and_its_longest_row_times_the_batch_padded():
    cfg = load_config(SMOKE_SENTIMENT, {"tune.batch_size": 2, "tune.grad_accum": 3})
    lengths = [10, 2, 9, 3]
    assert budget.step_tokens(lengths, cfg, packed=True, n_train=4) == 6 * 6  # 6 tokens a row, 6 rows a step
    # 1,000 training rows: megabatches of 50 batches hold all four, sorted: [10, 9], [3, 2].
    assert budget.step_tokens(lengths, cfg, packed=False, n_train=1000) == (2 * 10 + 2 * 3) / 2 * 3
    # 8 rows: megabatches of one batch, in random order: never less padding than sorted, never more than all-longest.
    assert 13 * 3 <= budget.step_tokens(lengths, cfg, packed=False, n_train=8) <= 2 * 10 * 3
    # Validation batches (twice the training batch) come in split order: the lengths shuffled, padded.
    val = budget.row_tokens_validated([10, 2, 9, 3, 8, 1, 7, 4], cfg, packed=False)
    assert 7 <= val <= 10 and budget.row_tokens_validated([10, 2, 9, 3], cfg, packed=True) == 6
    assert budget.batch_tokens([10, 2, 9, 3, 5], 2, packed=False) == (20 + 18) / 2  # the last, partial batch left out
