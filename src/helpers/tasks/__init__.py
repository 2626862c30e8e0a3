"""The task registry: one module per task where the task changes the algorithm.

Each task module (helpers.tasks.chat, helpers.tasks.classification) has the same names:

    labels(cfg, rows)                      the label set (None for chat)
    encode(tokenizer, rows, labels, max_length, split) -> datasets.Dataset
    show_example(tokenizer, row, max_length) -> str   what one training example looks like
    load_base(cfg, labels, dtype)          the base model to tune
    peft_task / modules_to_save(model)     what PEFT needs to know
    collator(cfg, tokenizer, model_type)   how batches are built
    packs(cfg, model_type)                 whether batches are packed
    loss_weights(cfg, rows, labels)        class weights for the loss, or None
    compute_metrics                        the Trainer's metrics at each evaluation, or None
    PREDICTION_LOSS_ONLY                   whether evaluation keeps only the loss

A third task (say, preference pairs) plugs in here: a module with these names and one line
in TASKS. Stage 05's tables and figures per task live in helpers.evaluation_<task>.
"""
from __future__ import annotations

from types import ModuleType

from ..config import Config
from . import chat, classification

TASKS: dict[str, ModuleType] = {"chat": chat, "classification": classification}


def for_config(cfg: Config) -> ModuleType:
    """The task module of cfg.experiment.task (the config has checked the name)."""
    return TASKS[cfg.experiment.task]
