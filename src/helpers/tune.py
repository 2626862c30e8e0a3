"""Stage 04: tune a chat model or a text classifier (LoRA, DoRA, rsLoRA, full, frozen layers).

Reads data/train.augmented.jsonl (else train.jsonl) and validation.jsonl; writes model/
{checkpoints, adapter, final, tensorboard, log_history.json, samples.jsonl}, the loss figure
and metrics["tune"]. The stage is a chain of drivers over the engine: an optional Optuna
search (helpers.search), the training (helpers.training, one function per step, which notebook
04 shows one by one), an optional cross-validation (helpers.crossval), the other members of an
ensemble (helpers.ensemble). Also a command:

    python -m helpers.tune --run-dir reports/<run> [--set tune.max_steps=20 ...] [--search]
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m helpers.tune --run-dir reports/<run>

Under accelerate launch (make tune-distributed) tune.batch_size stays the global batch: each
of the N processes trains on batch_size / N of the same examples one process would take
(accelerate's split_batches), gradients are averaged (DDP), and the main process alone writes
the run's files.

Rerunning on the same run folder continues from the last checkpoint in model/checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import pandas as pd

from . import adapters, artifacts, chat, crossval, data, ensemble, plots, runs, schema, search, training
from .config import Config, ConfigError, apply_overrides, to_yaml
from .runs import Run

STAGE = "tune"
NOTEBOOK = "04-tune-model"  # this stage's name in manifest.json (helpers.pipeline.NOTEBOOKS; a test keeps them equal)


def run_stage(run: Run, cfg: Config) -> dict[str, Any]:
    """Stage 04 from top to bottom: search (search.enabled), train, the ensemble's other members
    (tune.ensemble), cross-validate (tune.cv_folds).

    Notebook 04 makes the same calls one cell at a time; `python -m helpers.tune` runs this.
    """
    if cfg.tune.cv_folds and training.world_size() > 1:
        raise ConfigError("tune.cv_folds: cross-validation trains its folds in one process; run this stage "
                          "without accelerate launch, or set tune.cv_folds to 0")
    if cfg.tune.ensemble > 1 and training.world_size() > 1:
        raise ConfigError(ensemble.ONE_PROCESS)
    if cfg.search.enabled:
        cfg = search.apply_best(run, cfg, search.run_search(run, cfg))
    metrics = train(run, cfg)
    if cfg.tune.ensemble > 1:
        metrics["ensemble"] = ensemble.train_members(run, cfg)
    if cfg.tune.cv_folds:
        metrics["cv"] = crossval.cross_validate(run, cfg)
    return metrics


def train(run: Run, cfg: Config) -> dict[str, Any]:
    """Fit (or continue), save adapter and final model, record what happened."""
    train_rows, val_rows = training.load_splits(run)
    return finish(run, cfg, training.fit(cfg, train_rows, val_rows, run.model, samples=samples_file(run)))


def samples_file(run: Run):
    """Where the chat task writes its answers to fixed validation prompts during training."""
    return run.model / "samples.jsonl"


def finish(run: Run, cfg: Config, fitted: training.Fitted) -> dict[str, Any]:
    """Save the adapter and the merged model, the loss history and figure, the samples; record metrics["tune"]."""
    if not fitted.trainer.is_world_process_zero():
        return {}  # under accelerate launch, one process writes
    model_dir = run.model
    history = fitted.trainer.state.log_history
    trainer = fitted.trainer  # its datasets hold one example per row: no second read of the splits
    metrics = {"method": cfg.tune.method, "train_file": run.train_file.name, "train_rows": len(trainer.train_dataset),
               "validation_rows": len(trainer.eval_dataset or []), **training.summarize(fitted),
               **step_time(run, cfg, fitted, len(trainer.train_dataset))}
    training.save_model(fitted, model_dir / "adapter" if cfg.tune.method in adapters.PEFT_METHODS else None,
                        model_dir / "final", cfg)
    runs.write_json(model_dir / "log_history.json", history)
    fig = loss_figure(history, metrics["best_step"], metrics["planned_steps"])
    artifacts.figure(run, STAGE, "loss", fig, "Training loss (each logging step) and validation loss (each "
                     "evaluation, step 0 = before tuning). The dashed line is the checkpoint with the lowest "
                     "validation loss: that one became model/final.")
    plots.plt.close(fig)
    samples = samples_file(run)
    if samples.is_file():
        artifacts.table(run, STAGE, "samples", pd.DataFrame(data.read_jsonl(samples)),
                        "Answers to fixed validation prompts during tuning (step 0 = the base model).")
    return runs.record_metrics(run, STAGE, metrics)


def step_time(run: Run, cfg: Config, fitted: training.Fitted, n_train: int) -> dict[str, Any]:
    """How the steps were set (epochs, min_steps, max_steps, a time budget), the epochs they made, and
    this run's measured seconds per optimizer step beside stage 01's estimate from its timed steps."""
    state, t = fitted.trainer.state, cfg.tune
    done = state.global_step - fitted.resumed_from
    examples = state.global_step * t.batch_size * t.grad_accum
    out: dict[str, Any] = {"steps_rule": training.planned_steps(cfg, n_train)[1],
                           "epochs_trained": round(examples / max(n_train, 1), 2)}
    if t.time_budget_minutes:
        out["time_budget_minutes"] = t.time_budget_minutes
    if t.eval_rows:  # training validated on a seeded sample of the validation split
        out["eval_rows"] = t.eval_rows
    if done > 0 and fitted.step_seconds:
        out["seconds_per_step"] = round(fitted.step_seconds / done, 4)
        estimate = runs.read_json(run.metrics_file, {}).get("explore", {}).get("training_time", {})
        if estimate.get("est_seconds_per_step"):
            out["est_seconds_per_step_01"] = estimate["est_seconds_per_step"]
            out["step_time_vs_01_estimate"] = round(out["seconds_per_step"] / estimate["est_seconds_per_step"], 3)
            # Other work on the machine moves both figures: the load when 01 timed and as 04 ends.
            out["load_average_1min"] = {"01": estimate.get("timing", {}).get("load_average_1min"),
                                        "04": round(os.getloadavg()[0], 2)}
    return out


def loss_figure(history: list[dict], best_step: int | None, planned_steps: int):
    """Train and validation loss per step, the best checkpoint and an early stop marked."""
    fig, ax = plots.plt.subplots()  # plots set the house style and the headless backend
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss (batch mean at each logging step)", alpha=0.8)
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    if best_step:
        ax.axvline(best_step, ls="--", color="grey", label=f"best checkpoint, saved as final (step {best_step})")
    last = max((s for s, _ in train), default=0)
    if 0 < last < planned_steps:
        ax.axvline(last, ls=":", color="C3", label=f"early stop at step {last} of {planned_steps}")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy per loss token", title="Loss during tuning")
    ax.legend()
    return fig



# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """`python -m helpers.tune --run-dir DIR [--set key=value ...] [--search] [--record-stage]`."""
    parser = argparse.ArgumentParser(prog="python -m helpers.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="run folder made by stage 01 (reports/<run>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key for this run, e.g. --set tune.max_steps=20 (repeatable)")
    parser.add_argument("--search", action="store_true", help="run the Optuna search first (as search.enabled)")
    parser.add_argument("--record-stage", action="store_true",
                        help=f"record this as the run's stage {NOTEBOOK} in manifest.json, so that "
                             f"`python -m helpers.pipeline --resume RUN` goes on with stage 05 (make tune-distributed)")
    args = parser.parse_args(argv)
    started, record = time.perf_counter(), args.record_stage and training.is_main_process()
    try:
        run, cfg = runs.open_run(args.run_dir)
        if record:
            runs.record_stage(run, NOTEBOOK, status="running", processes=training.world_size())
        if args.set:
            cfg = apply_overrides(cfg, args.set)
            if training.is_main_process():  # atomic: the other processes may be reading it right now
                runs.write_text(run.config_file, to_yaml(cfg))  # config.yaml says what ran
        if args.search:
            cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"enabled": True})})
        metrics = run_stage(run, cfg)
    except BaseException as e:
        if record and "run" in locals():
            runs.record_stage(run, NOTEBOOK, status="failed", seconds=round(time.perf_counter() - started, 1),
                              error=f"{type(e).__name__}: {e}")
        if isinstance(e, (ConfigError, schema.DataError, chat.ChatTemplateError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    if record:
        runs.record_stage(run, NOTEBOOK, status="ok", seconds=round(time.perf_counter() - started, 1), error="")
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k != "cv"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
