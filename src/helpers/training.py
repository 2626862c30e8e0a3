"""Engine, training side: from rows and a config to a trained, saved model.

The chain, each step a function (notebook 04 calls them one by one and shows what each made;
`fit` calls them in a row for cross-validation folds and search trials):

    prepared = prepare(cfg, train_rows, val_rows, output_dir)   tokenizer, labels, datasets, checkpoint
    model    = adapters.build_model(cfg, prepared.labels)       base model + LoRA (or frozen layers)
    args     = arguments(cfg, prepared, model)                  TrainingArguments from the tune section
    trainer  = make_trainer(cfg, prepared, model, args)         TuneTrainer with callbacks
    fitted   = run(trainer, prepared)                           train (continue from the checkpoint)
    save_model(fitted, adapter_dir, final_dir, cfg)             adapter + merged model, safetensors

What changes with the task (encoding, base model, batches, metrics) comes from helpers.tasks.
"""
from __future__ import annotations

import ctypes
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from torch.utils.tensorboard import SummaryWriter
from transformers import (DataCollatorWithFlattening, EarlyStoppingCallback, ProgressCallback, TrainerCallback,
                          TrainingArguments)
from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
from transformers.integrations import TensorBoardCallback

from . import adapters, data, models, precision, runs, tasks
from .config import Config, ConfigError
from .runs import Run
from .trainer import TuneTrainer

# Transformers' names for our schedulers. "constant" keeps the warmup (transformers'
# "constant" would ignore it); "step" is built by TuneTrainer.create_scheduler.
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup", "step": "constant"}


# ---------------------------------------------------------------- the chain

def load_splits(run: Run) -> tuple[list[dict], list[dict]]:
    """The rows a run trains and validates on (Run.train_file: augmented when stage 03 ran)."""
    return data.read_jsonl(run.train_file), data.read_jsonl(run.data / "validation.jsonl")


@dataclass
class Prepared:
    """What training needs before a model exists: tokenizer, label set, encoded splits, where to continue."""

    tokenizer: Any
    labels: list[str] | None
    train: Dataset
    validation: Dataset
    train_rows: list[dict]
    validation_rows: list[dict]
    output_dir: Path
    checkpoint: Path | None  # the newest complete checkpoint to continue from, or None

    @property
    def has_validation(self) -> bool:
        return len(self.validation) > 0


@dataclass
class Fitted:
    """A finished training: the trainer (best model loaded), its tokenizer, and how it ran."""

    trainer: Any
    tokenizer: Any
    resumed_from: int  # step of the checkpoint continued from; 0 = a fresh start
    planned_steps: int
    step_seconds: float  # time in optimizer steps of this process (throughput's denominator)


def prepare(cfg: Config, train_rows: list[dict], val_rows: list[dict], output_dir: Path,
            resume: bool = True) -> Prepared:
    """Seed, load the tokenizer, encode both splits for the task, find the checkpoint to continue from."""
    runs.seed_everything(cfg.experiment.seed)  # the same start however the caller got here
    check_processes(cfg)  # before any model loads
    task = tasks.for_config(cfg)
    tokenizer = models.load_tokenizer(cfg)
    labels = task.labels(cfg, train_rows)
    n = cfg.model.max_length
    train_ds = task.encode(tokenizer, train_rows, labels, n, "train")
    val_rows = eval_sample(cfg, val_rows)
    val_ds = task.encode(tokenizer, val_rows, labels, n, "validation")
    if not resume:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    return Prepared(tokenizer, labels, train_ds, val_ds, train_rows, val_rows, output_dir,
                    last_checkpoint(output_dir / "checkpoints"))


def eval_sample(cfg: Config, rows: list[dict]) -> list[dict]:
    """The validation rows training evaluates on: all, or tune.eval_rows of them (seeded, in split order)."""
    k = cfg.tune.eval_rows
    if not k or len(rows) <= k:
        return rows
    keep = sorted(random.Random(cfg.experiment.seed).sample(range(len(rows)), k))
    return [rows[i] for i in keep]


def arguments(cfg: Config, prepared: Prepared, model, progress: bool = True) -> TrainingArguments:
    """The TrainingArguments for this model and data (packing depends on the architecture)."""
    packed = tasks.for_config(cfg).packs(cfg, model.config.model_type)
    steps, _rule = planned_steps(cfg, len(prepared.train))
    return training_args(cfg, prepared.output_dir, prepared.has_validation, prepared.checkpoint is not None,
                         packed, progress, steps)


def planned_steps(cfg: Config, n_train: int) -> tuple[int, str]:
    """The max_steps to train (-1: the Trainer counts them from tune.epochs) and the rule that set them.

    tune.max_steps wins (stage 01 writes a time budget's steps there); otherwise epochs, raised to
    tune.min_steps when the data is so small that its epochs would give fewer steps."""
    t = cfg.tune
    if t.max_steps > 0:
        return t.max_steps, "time budget" if t.time_budget_minutes else "max_steps"
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum)) if n_train else 0
    if per_epoch and math.ceil(t.epochs * per_epoch) < t.min_steps:
        return t.min_steps, f"min_steps (small data: {t.min_steps / per_epoch:.1f} epochs of {per_epoch} steps)"
    return -1, "epochs"


def make_trainer(cfg: Config, prepared: Prepared, model, args: TrainingArguments, callbacks: list | None = None,
                 samples: Path | None = None) -> TuneTrainer:
    """The TuneTrainer: task collator and metrics, TensorBoard, early stopping, the task's own callbacks."""
    t, task = cfg.tune, tasks.for_config(cfg)
    main = is_main_process()  # under accelerate launch only it writes logs and samples
    step0 = checkpoint_step(prepared.checkpoint)
    cbs: list = [StepTimer(), ReleaseMemory()]
    if main:
        # purge_step: TensorBoard drops what the interrupted process logged after the checkpoint.
        writer = SummaryWriter(str(prepared.output_dir / "tensorboard"),
                               purge_step=step0 + 1 if prepared.checkpoint else None)
        cbs.append(TensorBoardCallback(writer))
    if prepared.has_validation and t.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if main and prepared.has_validation:
        cbs += task.callbacks(cfg, prepared.tokenizer, prepared.validation_rows, samples, step0)
    trainer = TuneTrainer(
        model=model, args=args, train_dataset=prepared.train,
        eval_dataset=prepared.validation if prepared.has_validation else None,
        processing_class=prepared.tokenizer, data_collator=task.collator(cfg, prepared.tokenizer,
                                                                         model.config.model_type),
        compute_metrics=task.compute_metrics, callbacks=cbs + list(callbacks or []),
        weights=task.loss_weights(cfg, prepared.train_rows, prepared.labels),
        step_schedule=(t.step_size, t.step_gamma) if t.scheduler == "step" else None)
    if not args.disable_tqdm:  # one text bar everywhere: a terminal, JupyterLab, and `make pipeline` streams it
        trainer.remove_callback(DEFAULT_PROGRESS_CALLBACK)
        trainer.add_callback(StepProgress)
    return trainer


def run(trainer: TuneTrainer, prepared: Prepared) -> Fitted:
    """Train (from the checkpoint when there is one); the best checkpoint is loaded at the end."""
    checkpoint = prepared.checkpoint
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.accelerator.num_processes > 1:  # the throughput counts every process's tokens
        counts = torch.tensor([trainer.tokens_seen, trainer.loss_tokens_seen], device=trainer.accelerator.device)
        trainer.tokens_seen, trainer.loss_tokens_seen = (int(c) for c in trainer.accelerator.reduce(counts, "sum"))
    timer = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StepTimer))
    return Fitted(trainer, prepared.tokenizer, checkpoint_step(checkpoint), trainer.state.max_steps, timer.seconds)


def fit(cfg: Config, train_rows: list[dict], val_rows: list[dict], output_dir: Path,
        callbacks: list | None = None, samples: Path | None = None, resume: bool = True,
        progress: bool = True) -> Fitted:
    """The whole chain: train on train_rows, evaluate on val_rows, checkpoint into output_dir."""
    prepared = prepare(cfg, train_rows, val_rows, output_dir, resume)
    model = adapters.build_model(cfg, prepared.labels)
    trainer = make_trainer(cfg, prepared, model, arguments(cfg, prepared, model, progress), callbacks, samples)
    return run(trainer, prepared)


# ---------------------------------------------------------------- pieces

def training_args(cfg: Config, output_dir: Path, has_validation: bool, resuming: bool = False,
                  packed: bool = False, progress: bool = True, max_steps: int | None = None) -> TrainingArguments:
    """TrainingArguments from the tune section (every knob from params); max_steps: planned_steps' count."""
    t = cfg.tune
    mixed = precision.training_precision(cfg)
    processes = check_processes(cfg)
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        # tune.batch_size is the global batch. With several processes, split_batches hands
        # each its 1/N share of the very batch one process would take (so the examples per
        # step, and the sampler's order, do not depend on N); "per device" is then per step.
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=eval_batch_size(cfg),
        accelerator_config={"split_batches": processes > 1},
        # Every weight that trains (adapters, head, unfrozen layers) gets a gradient at every
        # step, so DDP need not search the graph for unused ones; the Trainer would turn that
        # search on for PEFT models (not a PreTrainedModel), costing a graph walk per step.
        ddp_find_unused_parameters=False,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs, max_steps=t.max_steps if max_steps is None else max_steps,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # below 1: a share of the steps
        lr_scheduler_type=SCHEDULERS[t.scheduler],
        eval_strategy="steps" if has_validation else "no", eval_steps=t.eval_steps,
        eval_on_start=has_validation and not resuming,  # step 0: the base model's loss, the line to beat
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.keep_checkpoints,
        logging_steps=t.logging_steps, logging_first_step=True,  # the curve starts at the untrained loss
        load_best_model_at_end=has_validation, metric_for_best_model="eval_loss", greater_is_better=False,
        bf16=mixed == "bf16", fp16=mixed == "fp16", use_cpu=not torch.cuda.is_available(),
        seed=cfg.experiment.seed, data_seed=cfg.experiment.seed,
        # Packed batches have no pad to save; padded ones waste least when similar lengths meet.
        train_sampling_strategy="random" if packed else "group_by_length",
        prediction_loss_only=tasks.for_config(cfg).PREDICTION_LOSS_ONLY,
        label_names=["labels"], remove_unused_columns=False,  # our datasets hold model inputs only
        report_to="none",  # TensorBoard is added as a callback with its folder (no logging_dir in v5)
        disable_tqdm=not progress,  # the step bar (helpers.progress decides where it goes)
        dataloader_pin_memory=torch.cuda.is_available())


def eval_batch_size(cfg: Config) -> int:
    """Rows per validation batch: twice the training batch (no gradients to keep: twice fits)."""
    return 2 * cfg.tune.batch_size


def world_size() -> int:
    """Processes training together: WORLD_SIZE under accelerate launch / torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_processes(cfg: Config) -> int:
    """The number of processes, checked against the global batch it must split evenly."""
    n = world_size()
    if cfg.tune.batch_size % n:
        fits = [b for b in (cfg.tune.batch_size - cfg.tune.batch_size % n, cfg.tune.batch_size // n * n + n) if b]
        raise ConfigError(f"tune.batch_size: {cfg.tune.batch_size} is the global batch and must split evenly over "
                          f"the {n} training processes; use {' or '.join(map(str, fits))}, or launch "
                          f"a number of processes that divides it")
    return n


def is_main_process() -> bool:
    """False in the other processes of an `accelerate launch`: one process writes the run's files."""
    return int(os.environ.get("RANK", "0")) == 0


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last) in folder, or None."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint was saved at (0 for none)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


class StepProgress(ProgressCallback):
    """The Trainer's tqdm bar (step of total, elapsed, remaining) with the latest losses beside it,
    instead of a printed dict per log line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{logs[k]:.3f}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), float)}
            if shown:
                self.training_bar.set_postfix(shown)


class StepTimer(TrainerCallback):
    """Seconds spent in optimizer steps only (not in evaluations, samples or saves): the throughput's clock.
    `each` holds every step's seconds (helpers.budget times 01's steps with it), `seconds` their sum."""

    def __init__(self):
        self.each: list[float] = []
        self._start = 0.0

    @property
    def seconds(self) -> float:
        return sum(self.each)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.each.append(time.perf_counter() - self._start)


class ReleaseMemory(TrainerCallback):
    """Hand the memory a step or a validation pass freed back to the system (glibc's malloc_trim).

    Packed batches change shape at every step, so the allocator keeps freed blocks of many sizes
    that the next steps cannot reuse, and the resident memory grows with the steps: 30 LoRA steps of
    the bench's multi-turn chats (`make bench`'s set, 1,137 tokens a step) peaked at 4.44 GiB
    without, 3.64 GiB with, for 4.7% of the speed (315 vs 301 tokens/s; 2-core AVX-512 EPYC,
    2026-12-05, one run each). Where there is no glibc (macOS, musl) it does nothing."""

    def __init__(self):
        self.trim = malloc_trim()

    def on_step_end(self, args, state, control, **kwargs):
        self.trim()

    def on_evaluate(self, args, state, control, **kwargs):
        self.trim()


def malloc_trim():
    """glibc's malloc_trim(0) (returns 1 when it gave memory back), or a function that returns None without glibc."""
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


def save_model(fitted: Fitted, adapter_dir: Path | None, final_dir: Path, cfg: Config | None = None) -> None:
    """Write the adapter (PEFT methods) and the merged model + tokenizer, safetensors only."""
    model = fitted.trainer.model
    if isinstance(model, PeftModel):
        if adapter_dir is not None:
            model.save_pretrained(adapter_dir, safe_serialization=True)
        if cfg is not None and adapter_dir is not None and adapters.frozen_dtype(cfg) is not None:
            # Trained on a bf16 copy of the base: merge the (fp32) adapter into the fp32 base
            # instead, the same weights evaluation scores the base model with.
            model = PeftModel.from_pretrained(models.load_causal_lm(cfg), adapter_dir)
        model = model.merge_and_unload()  # plain weights: loads without peft, runs at base speed
    model.config.use_cache = True  # the Trainer turned it off for training; generation wants it
    shutil.rmtree(final_dir, ignore_errors=True)  # never a mix of an old and a new model
    model.save_pretrained(final_dir, safe_serialization=True)
    fitted.tokenizer.save_pretrained(final_dir)


def summarize(fitted: Fitted) -> dict[str, Any]:
    """The stage's metrics: losses, best step, steps, time, throughput, trainable parameters."""
    tr, state = fitted.trainer, fitted.trainer.state
    history = state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    seconds = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), 0.0)
    trainable, total = adapters.count_params(tr.model)
    best_step = state.best_global_step or None  # None: no evaluation ran (no validation rows)
    return {
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss": train_losses[-1] if train_losses else None,
        "val_loss_first": evals[0]["eval_loss"] if evals else None,
        "val_loss_best": state.best_metric,
        **{f"val_{k[5:]}_best": v for k, v in best_eval(history, best_step).items() if k != "eval_loss"},
        "best_step": best_step,
        "steps": state.global_step, "planned_steps": fitted.planned_steps,
        "stopped_early": state.global_step < fitted.planned_steps,
        "resumed_from_step": fitted.resumed_from,
        "wall_seconds": round(seconds, 1),  # this process's training time (a resumed run: the rest only)
        "step_seconds": round(fitted.step_seconds, 1),  # of which optimizer steps (no evals, saves)
        "train_tokens_per_s": round(tr.tokens_seen / fitted.step_seconds, 1) if fitted.step_seconds else None,
        "loss_tokens_per_s": round(tr.loss_tokens_seen / fitted.step_seconds, 1) if fitted.step_seconds else None,
        "trainable_params": trainable, "total_params": total, "trainable_share": round(trainable / total, 5),
        "lora_targets": adapters.lora_targets(tr.model),
        "precision": "bf16" if tr.args.bf16 else "fp16" if tr.args.fp16 else "fp32",
        "packed": isinstance(tr.data_collator, DataCollatorWithFlattening),
        "processes": tr.accelerator.num_processes,  # > 1: accelerate launch; throughput is all of them together
        "examples_per_step": tr.args.per_device_train_batch_size * tr.args.gradient_accumulation_steps,
    }


def fit_saved(cfg: Config, train_rows: list[dict], val_rows: list[dict], folder: Path,
              done_name: str, about: dict[str, Any]) -> dict[str, Any]:
    """Train one more model into folder (a fold, an ensemble member), keep only its merged model in
    folder/final (no checkpoints, no TensorBoard logs), and record its best scores and `about` in folder/<done_name>. A finished one (that
    file exists) is not trained again; an interrupted one continues from its last checkpoint."""
    done = folder / done_name
    if done.is_file():
        return runs.read_json(done)
    fitted = fit(cfg, train_rows, val_rows, folder)
    state = fitted.trainer.state
    best = state.best_global_step or state.global_step
    save_model(fitted, None, folder / "final")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # k full checkpoint sets would fill the disk
    # and the event logs' timestamps would make every retrain look new to stage 05's reuse (its scores: done)
    shutil.rmtree(folder / "tensorboard", ignore_errors=True)
    scores = {**about, "train_rows": len(train_rows), "validation_rows": len(val_rows), "best_step": best,
              "steps": state.global_step, **best_eval(state.log_history, best)}
    runs.write_json(done, scores)
    return scores


def best_eval(history: list[dict], best_step: int | None) -> dict[str, float]:
    """The eval_* values logged at the best step (loss, and accuracy / F1 for classification)."""
    at = [h for h in history if "eval_loss" in h and h["step"] == best_step]
    return {k: v for k, v in at[-1].items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k} \
        if at else {}


