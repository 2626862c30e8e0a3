"""Stage 04: tune a chat model or a text classifier (LoRA, DoRA, rsLoRA, full, frozen layers).

Reads data/train.augmented.jsonl (else train.jsonl) and validation.jsonl; writes model/
{checkpoints, adapter, final, tensorboard, log_history.json, samples.jsonl}, the loss figure
and metrics["tune"]. The Trainer does the loop; PEFT the adapters. Cross-validation lives in
helpers.crossval, the search in helpers.search. Also a command:

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
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.tensorboard import SummaryWriter
from transformers import (DataCollatorForSeq2Seq, DataCollatorWithFlattening, DataCollatorWithPadding,
                          EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments)
from transformers.integrations import TensorBoardCallback

from . import artifacts, chat, clean, data, models, plots, runs
from .config import Config, ConfigError, apply_overrides, to_yaml
from .runs import Run

# LoRA targets per architecture: every linear layer of the blocks (attention and MLP), which
# the QLoRA paper found needed to match full fine-tuning; PEFT's own default (q, v only) is weaker.
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_LIKE = ["query", "key", "value", "dense"]
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite")
TARGET_MODULES = {
    **{t: LLAMA_LIKE for t in DECODERS},
    **{t: BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}
PEFT_METHODS = ("lora", "dora", "rslora")
HEAD_NAMES = ("classifier", "score")  # classification heads: new, so always fully trained
# Transformers' names for our schedulers. "constant" keeps the warmup (transformers'
# "constant" would ignore it); "step" is built by TuneTrainer.create_scheduler.
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup", "step": "constant"}
STAGE = "tune"
NOTEBOOK = "04-tune-model"  # this stage's name in manifest.json (helpers.pipeline.NOTEBOOKS; a test keeps them equal)


# ---------------------------------------------------------------- config

def precision(cfg: Config) -> str:
    """The mixed precision to train in: bf16 / fp16 autocast where the hardware has it, else fp32."""
    wanted = cfg.tune.precision
    if torch.cuda.is_available():
        if wanted == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("tune.precision: bf16 needs an Ampere or newer GPU; use fp16 or auto")
        if wanted != "auto":
            return wanted
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if wanted == "fp16":
        raise ConfigError("tune.precision: fp16 autocast is for GPUs; on CPU use bf16, fp32 or auto")
    if wanted != "auto":
        return wanted
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    # torch exposes these checks only as private helpers; absent ones mean "no".
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(c() for c in checks if c is not None)


# ---------------------------------------------------------------- data

def load_splits(run: Run) -> tuple[list[dict], list[dict]]:
    """Train and validation rows of a run."""
    return data.read_jsonl(run.train_file), data.read_jsonl(run.data / "validation.jsonl")


def labels_for(cfg: Config, rows: list[dict]) -> list[str]:
    """The label set in a fixed order: data.labels when given, else every label of the train rows."""
    return list(cfg.data.labels) if cfg.data.labels else data.labels_of(rows)


def encode_chats(tokenizer, rows: list[dict], max_length: int, split: str):
    """Chats as token ids with assistant-only labels; rows left with no loss token are an error."""
    encoded = [chat.encode(tokenizer, r["messages"], max_length) for r in rows]
    empty = [r["id"] for r, e in zip(rows, encoded) if e.n_loss_tokens == 0]
    if empty:
        raise data.DataError(
            f"{len(empty)} {split} example(s) have no assistant token left after cutting to model.max_length="
            f"{max_length}, so they cannot teach anything: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}. "
            f"Raise model.max_length, or shorten their prompts (02-clean drops rows over clean.max_tokens).")
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})


def encode_texts(tokenizer, rows: list[dict], labels: list[str], max_length: int, split: str):
    """Texts as token ids (cut at max_length) with integer labels; an unknown label is an error."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = [f"{r['id']} ({r['label']!r})" for r in rows if r["label"] not in index]
    if unknown:
        raise data.DataError(f"{len(unknown)} {split} row(s) have a label outside {labels}: "
                             f"{', '.join(unknown[:5])}; set data.labels or fix the rows")
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": [index[r["label"]] for r in rows]})


def class_weights(rows: list[dict], labels: list[str]):
    """clean.class_weights ("balanced") of the rows trained on, in the model's label order, as a float tensor."""
    # The rows tune trains on (augmented when 03 ran), not metrics["clean"]["class_weights"]
    # (the clean train split): augmentation can shift the label mix, and the loss sees these rows.
    missing = sorted(set(labels) - {r["label"] for r in rows})
    if missing:
        raise data.DataError(f"tune.class_weights: label(s) {missing} have no training rows, so their weight is "
                             f"undefined; add rows or drop them from data.labels")
    weights = clean.class_weights(rows)
    return torch.tensor([weights[label] for label in labels], dtype=torch.float32)


# ---------------------------------------------------------------- model

def target_modules(model, cfg: Config) -> list[str] | str:
    """LoRA target modules: tune.lora.target_modules, else the default for the architecture."""
    if cfg.tune.lora.target_modules:
        return cfg.tune.lora.target_modules
    # Unknown architectures: PEFT's "all-linear" (every linear layer but the output head).
    return TARGET_MODULES.get(model.config.model_type, "all-linear")


def head_names(model) -> list[str]:
    """Names of the classification head modules (new weights: trained in full, saved with the adapter)."""
    return [n for n in HEAD_NAMES if hasattr(model, n)]


def add_lora(model, cfg: Config):
    """Wrap the model with a LoRA / DoRA / rsLoRA adapter as tune.method and tune.lora say."""
    t = cfg.tune
    classify = cfg.experiment.task == "classification"
    lora = LoraConfig(
        r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout, target_modules=target_modules(model, cfg),
        use_dora=t.method == "dora",  # weight-decomposed: magnitude and direction learned apart
        use_rslora=t.method == "rslora",  # scale alpha/sqrt(r), so a larger r keeps learning
        task_type=TaskType.SEQ_CLS if classify else TaskType.CAUSAL_LM,
        modules_to_save=head_names(model) if classify else None)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"tune.lora.target_modules: {e}\n  name modules of {model.config.model_type!r} "
                          f"(see model.named_modules()) or leave it empty for the default") from None


def freeze_layers(model, cfg: Config):
    """Freeze the embeddings and the first tune.freeze_layers blocks; the rest and the head train."""
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                   and len(m) == model.config.num_hidden_layers), None)
    if blocks is None:
        raise ConfigError(f"tune.method: freeze cannot find the layer list of {model.config.model_type!r}; use lora")
    n = len(blocks) // 2 if cfg.tune.freeze_layers is None else cfg.tune.freeze_layers
    if n > len(blocks):
        raise ConfigError(f"tune.freeze_layers: {n}, but the model has {len(blocks)} layers")
    # BERT-style models keep positions and token types in an `embeddings` block: freeze it whole.
    # With tied embeddings (SmolLM2) this also freezes the output head: both are one matrix.
    embeddings = [m for name, m in model.named_modules() if name.split(".")[-1] == "embeddings"]
    for module in [*(embeddings or [model.get_input_embeddings()]), *blocks[:n]]:
        module.requires_grad_(False)
    return model


def build_model(cfg: Config, labels: list[str] | None = None):
    """The base model for the task, prepared for tune.method."""
    classify = cfg.experiment.task == "classification"
    base = models.load_classifier(cfg, labels) if classify else models.load_causal_lm(cfg, dtype=frozen_dtype(cfg))
    if cfg.tune.method in PEFT_METHODS:
        return add_lora(base, cfg)
    if cfg.tune.method == "freeze":
        return freeze_layers(base, cfg)
    return base  # full: every weight trains


def frozen_dtype(cfg: Config):
    """bf16 for a chat base model that only adapters train under bf16 autocast, else None (the default).

    Autocast casts every fp32 weight to bf16 at every matmul; storing the frozen weights in
    bf16 gives the same numbers without the casts (measured +21% tokens/s on SmolLM2 on CPU).
    PEFT keeps the adapters in fp32, and save_model merges them into the fp32 base.
    """
    if cfg.experiment.task == "chat" and cfg.tune.method in PEFT_METHODS and cfg.model.dtype == "auto" \
            and precision(cfg) == "bf16":
        return torch.bfloat16
    return None


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------- trainer

class TuneTrainer(Trainer):
    """The Trainer plus what it lacks for us: class-weighted loss, a step LR schedule, token counts."""

    def __init__(self, *args, weights=None, step_schedule: tuple[int | None, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = weights
        self.step_schedule = step_schedule
        self.tokens_seen = 0  # real (non-pad) input tokens trained on in this process
        self.loss_tokens_seen = 0  # tokens (chat) or examples (classification) that carried loss
        if weights is not None:
            self.loss_is_scaled_for_ga = False  # our weighted loss is a per-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self._count(inputs)
        labels = inputs.get("labels")
        if self.weights is None and labels is not None and labels.dim() == 2 and labels.shape[0] == 1 \
                and "position_ids" in inputs:
            return self._packed_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.weights is None:
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not model.training and labels is not None and labels.dim() == 2:  # padded chat: the mean of
                tokens = int((labels[:, 1:] != chat.IGNORE).sum())  # the batch's shifted loss tokens
                self._add_eval_sums((out[0] if return_outputs else out).detach().double() * tokens, tokens)
            return out
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = F.cross_entropy(outputs.logits.float(), inputs["labels"],
                               weight=self.weights.to(outputs.logits.device))
        return (loss, outputs) if return_outputs else loss

    def _packed_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """Causal-LM loss of a packed row, with logits only where a label follows.

        The output layer maps each position to 49k vocabulary scores; most positions (system
        prompt, user turns) carry no loss, so scoring only the rest saves that work and the
        memory of their logits (measured +14% tokens/s on SmolLM2). Same value as the model's
        own loss: summed token cross-entropy over the tokens that carry loss.
        """
        labels = inputs["labels"]  # (1, T): packed examples, -100 outside assistant turns
        keep = (labels[0, 1:] != chat.IGNORE).nonzero().squeeze(1)  # positions whose next token is learned
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
        logits = outputs.logits[0].float()  # (K, V)
        loss = F.cross_entropy(logits, labels[0, keep + 1], reduction="sum")
        if not model.training:
            self._add_eval_sums(loss.detach().double(), len(keep))
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(len(keep), 1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages it back
        return (loss, outputs) if return_outputs else loss

    # ---- validation loss: summed over the split's loss tokens, so batching does not matter
    # The Trainer averages per-batch means, which weighs a token by its batch's size and, with
    # several processes, by the rows accelerate repeats to even out the last batches (7% off
    # at step 0 of the smoke run). For chat (prediction_loss_only) we add up each process's
    # token losses and counts instead: the same figure for any batch size and process count.

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        exact = self.args.prediction_loss_only
        self._eval_sums = torch.zeros(2, dtype=torch.float64) if exact else None  # (summed NLL, loss tokens)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if exact:
            sums = self._eval_sums.to(self.accelerator.device)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, "sum")
            output.metrics[f"{metric_key_prefix}_loss"] = float(sums[0] / sums[1]) if sums[1] else float("nan")
        self._eval_sums = None
        return output

    def _add_eval_sums(self, nll_sum, tokens) -> None:
        """Add a validation batch's summed token loss and its count (chat evaluation only)."""
        if getattr(self, "_eval_sums", None) is not None:
            self._eval_sums += torch.tensor([float(nll_sum), float(tokens)], dtype=torch.float64)

    def get_eval_dataloader(self, eval_dataset=None):
        if self.accelerator.num_processes == 1:
            return super().get_eval_dataloader(eval_dataset)
        if self.args.prediction_loss_only:
            # Each process scores its own rows, each row once (accelerate's loader would repeat
            # some), in as many batches as every other process: the steps stay in lockstep.
            dataset = self.eval_dataset if eval_dataset is None else eval_dataset
            batches = eval_shard(len(dataset), self.args.per_device_eval_batch_size,
                                 self.accelerator.num_processes, self.accelerator.process_index)
            return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator)
        # Classification (predictions gathered for accuracy / F1): accelerate's loader, whole
        # batches per process as one process has them (not split like the training batches).
        config = self.accelerator.dataloader_config
        split, config.split_batches = config.split_batches, False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            config.split_batches = split

    def _count(self, inputs) -> None:
        mask = inputs.get("attention_mask")  # packed batches have none: every token is real
        self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        labels = inputs["labels"]
        self.loss_tokens_seen += int((labels != chat.IGNORE).sum()) if labels.dim() > 1 else labels.numel()

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.step_schedule is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        size, gamma = self.step_schedule
        warmup = self.args.get_warmup_steps(num_training_steps)
        size = size or max(1, (num_training_steps - warmup) // 3)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer or self.optimizer, partial(_step_factor, warmup=warmup, size=size, gamma=gamma))
        self._created_lr_scheduler = True
        return self.lr_scheduler


def eval_shard(n_rows: int, batch_size: int, processes: int, rank: int) -> list[list[int]]:
    """One process's validation batches: a contiguous 1/N of the rows, in as many batches as every process."""
    if n_rows < processes:
        raise data.DataError(f"the validation split has {n_rows} row(s), fewer than the {processes} training "
                             f"processes; launch fewer processes or give data.split.validation more rows")
    rows = list(range(rank * n_rows // processes, (rank + 1) * n_rows // processes))
    # The same count for all (the largest share's), each batch at most batch_size rows; with
    # batch_size >= 2 (it is 2 x tune.batch_size) no process is left with an empty batch.
    largest = -(-n_rows // processes)  # ceiling divisions
    k = -(-largest // batch_size)
    return [rows[i * len(rows) // k:(i + 1) * len(rows) // k] for i in range(k)]


def _step_factor(step: int, warmup: int, size: int, gamma: float) -> float:
    """StepLR after a linear warmup from 0 (as transformers' schedules): the LR factor at an optimizer step."""
    if step < warmup:
        return step / warmup
    return gamma ** ((step - warmup) // size)


def training_args(cfg: Config, output_dir: Path, has_validation: bool, resuming: bool = False,
                  packed: bool = False):
    """TrainingArguments from the tune section (every knob from params)."""
    t, chat_task = cfg.tune, cfg.experiment.task == "chat"
    mixed = precision(cfg)
    processes = check_processes(cfg)
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        # tune.batch_size is the global batch. With several processes, split_batches hands
        # each its 1/N share of the very batch one process would take (so the examples per
        # step, and the sampler's order, do not depend on N); "per device" is then per step.
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size * 2,  # no gradients to keep: twice fits
        accelerator_config={"split_batches": processes > 1},
        # Every weight that trains (adapters, head, unfrozen layers) gets a gradient at every
        # step, so DDP need not search the graph for unused ones; the Trainer would turn that
        # search on for PEFT models (not a PreTrainedModel), costing a graph walk per step.
        ddp_find_unused_parameters=False,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
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
        prediction_loss_only=chat_task,  # chat logits are (tokens x 49k vocab): never keep them
        label_names=["labels"], remove_unused_columns=False,  # our datasets hold model inputs only
        report_to="none",  # TensorBoard is added as a callback with its folder (no logging_dir in v5)
        disable_tqdm=True,  # papermill records every bar update; the printed logs say the same
        dataloader_pin_memory=torch.cuda.is_available())


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


def packs(cfg: Config, model_type: str) -> bool:
    """Whether chat batches are packed: tune.packing, for decoders known to mask packed rows per example."""
    # These build their masks with transformers' masking utils, which detect packed rows from
    # restarting position ids (sdpa, eager, flex; flash uses the ids directly). Other models
    # could let examples attend to each other, so they get padded batches.
    return cfg.experiment.task == "chat" and cfg.tune.packing and model_type in DECODERS


def collator(cfg: Config, tokenizer, model_type: str):
    """Batches: packed without padding (chat, tune.packing) or padded to the batch's longest example."""
    if cfg.experiment.task == "classification":
        return DataCollatorWithPadding(tokenizer)
    if packs(cfg, model_type):
        # One row per batch, position ids restarting at each example, the first label of each
        # example ignored: no pad token is computed and no example sees another.
        return DataCollatorWithFlattening()
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=chat.IGNORE)


def classification_metrics(pred) -> dict[str, float]:
    """Accuracy and macro F1 of the top label, from (scores (N, labels), label ids) or an EvalPrediction."""
    # The Trainer logs these at each evaluation (eval_accuracy, eval_f1_macro); crossval scores
    # the fold ensemble on the test split with the same function.
    y_pred = np.asarray(pred[0]).argmax(-1)  # an EvalPrediction indexes as (predictions, label_ids, ...)
    y = np.asarray(pred[1])
    return {"accuracy": float(accuracy_score(y, y_pred)), "f1_macro": float(f1_score(y, y_pred, average="macro"))}


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (its trainer_state.json is written last) in folder, or None."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint was saved at (0 for none)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


# ---------------------------------------------------------------- callbacks

class SampleCallback(TrainerCallback):
    """Answer a few fixed validation prompts at each evaluation, step 0 included (model/samples.jsonl)."""

    def __init__(self, tokenizer, rows: list[dict], path: Path, max_new_tokens: int):
        self.tokenizer, self.path, self.max_new_tokens = tokenizer, path, max_new_tokens
        self.prompts = [(_last_prompt(r["messages"]), chat.prompt_ids(tokenizer, r["messages"])) for r in rows]

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self._sample(model, state.global_step, state)

    def _sample(self, model, step: int, state) -> None:
        if not state.is_world_process_zero:
            return
        was_training = model.training
        model.eval()
        rows = []
        with torch.no_grad():
            for prompt, ids in self.prompts:
                x = torch.tensor([ids], device=model.device)
                # use_cache: the Trainer turns the cache off for training; generation needs it.
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=self.max_new_tokens, use_cache=True,
                                     pad_token_id=self.tokenizer.pad_token_id)
                answer = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
                rows.append({"step": step, "prompt": prompt, "answer": answer})
        # Rewritten whole (atomically) rather than appended: a kill mid-append would leave half a
        # line that the resumed run's _trim_samples could not read. The file holds a few dozen rows.
        data.write_jsonl(self.path, (data.read_jsonl(self.path) if self.path.is_file() else []) + rows)
        model.train(was_training)


class StepTimer(TrainerCallback):
    """Seconds spent in optimizer steps only (not in evaluations, samples or saves): the throughput's clock."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


def _last_prompt(messages: list[dict]) -> str:
    """The message the last assistant turn answers (what a reader of the samples needs)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[last - 1]["content"] if last else ""


def _trim_samples(path: Path, upto_step: int) -> None:
    """Drop the samples after a checkpoint's step (all on a fresh start): a resumed run makes them again."""
    rows = data.read_jsonl(path) if path.is_file() and upto_step else []
    data.write_jsonl(path, [r for r in rows if r["step"] <= upto_step])


# ---------------------------------------------------------------- training

@dataclass
class Fitted:
    """A finished training: the trainer (best model loaded), its tokenizer, and how it ran."""

    trainer: Any
    tokenizer: Any
    resumed_from: int  # step of the checkpoint continued from; 0 = a fresh start
    planned_steps: int
    step_seconds: float  # time in optimizer steps of this process (throughput's denominator)


def encode_splits(cfg: Config, tokenizer, train_rows: list[dict], val_rows: list[dict],
                  labels: list[str] | None):
    """Train and validation datasets for the task (masks and labels checked)."""
    n = cfg.model.max_length
    if cfg.experiment.task == "classification":
        return (encode_texts(tokenizer, train_rows, labels, n, "train"),
                encode_texts(tokenizer, val_rows, labels, n, "validation"))
    return encode_chats(tokenizer, train_rows, n, "train"), encode_chats(tokenizer, val_rows, n, "validation")


def loss_weights(cfg: Config, train_rows: list[dict], labels: list[str] | None):
    """Class weights for the loss when tune.class_weights asks for them, else None."""
    if not cfg.tune.class_weights:
        return None
    if cfg.experiment.task != "classification":
        raise ConfigError("tune.class_weights: class weights are for classification; set it to false for chat")
    return class_weights(train_rows, labels)


def fit(cfg: Config, train_rows: list[dict], val_rows: list[dict], output_dir: Path,
        callbacks: list | None = None, samples: Path | None = None, resume: bool = True) -> Fitted:
    """Train on train_rows, evaluate on val_rows, checkpoint into output_dir; continue from its last checkpoint."""
    runs.seed_everything(cfg.experiment.seed)  # the same start however the caller got here
    t, classify = cfg.tune, cfg.experiment.task == "classification"
    check_processes(cfg)  # before any model loads
    main = is_main_process()  # under accelerate launch only it writes logs and samples
    tokenizer = models.load_tokenizer(cfg)
    labels = labels_for(cfg, train_rows) if classify else None
    train_ds, val_ds = encode_splits(cfg, tokenizer, train_rows, val_rows, labels)
    has_val = len(val_ds) > 0
    if not resume:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    checkpoint = last_checkpoint(output_dir / "checkpoints")
    step0 = checkpoint_step(checkpoint)

    timer = StepTimer()
    cbs = [timer]
    if main:
        # purge_step: TensorBoard drops what the interrupted process logged after the checkpoint.
        writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=step0 + 1 if checkpoint else None)
        cbs.append(TensorBoardCallback(writer))
    if has_val and t.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if samples is not None and not classify and has_val and t.sample_prompts and main:
        _trim_samples(samples, step0)
        cbs.append(SampleCallback(tokenizer, val_rows[: t.sample_prompts], samples, t.sample_max_new_tokens))

    model = build_model(cfg, labels)
    model_type = model.config.model_type
    trainer = TuneTrainer(
        model=model, args=training_args(cfg, output_dir, has_val, checkpoint is not None, packs(cfg, model_type)),
        train_dataset=train_ds, eval_dataset=val_ds if has_val else None, processing_class=tokenizer,
        data_collator=collator(cfg, tokenizer, model_type),
        compute_metrics=classification_metrics if classify else None,
        callbacks=cbs + list(callbacks or []), weights=loss_weights(cfg, train_rows, labels),
        step_schedule=(t.step_size, t.step_gamma) if t.scheduler == "step" else None)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.accelerator.num_processes > 1:  # the throughput counts every process's tokens
        counts = torch.tensor([trainer.tokens_seen, trainer.loss_tokens_seen], device=trainer.accelerator.device)
        trainer.tokens_seen, trainer.loss_tokens_seen = (int(c) for c in trainer.accelerator.reduce(counts, "sum"))
    return Fitted(trainer, tokenizer, step0, trainer.state.max_steps, timer.seconds)


def save_model(fitted: Fitted, adapter_dir: Path | None, final_dir: Path, cfg: Config | None = None) -> None:
    """Write the adapter (PEFT methods) and the merged model + tokenizer, safetensors only."""
    model = fitted.trainer.model
    if isinstance(model, PeftModel):
        if adapter_dir is not None:
            model.save_pretrained(adapter_dir, safe_serialization=True)
        if cfg is not None and adapter_dir is not None and frozen_dtype(cfg) is not None:
            # Trained on a bf16 copy of the base: merge the (fp32) adapter into the fp32 base
            # instead, the same weights evaluation scores the base model with.
            model = PeftModel.from_pretrained(models.load_causal_lm(cfg), adapter_dir)
        model = model.merge_and_unload()  # plain weights: loads without peft, runs at base speed
    model.config.use_cache = True  # the Trainer turned it off for training; generation wants it
    shutil.rmtree(final_dir, ignore_errors=True)  # never a mix of an old and a new model
    model.save_pretrained(final_dir, safe_serialization=True)
    fitted.tokenizer.save_pretrained(final_dir)


def lora_targets(model) -> list[str] | None:
    """The module names a PEFT adapter was put on (PEFT expands "all-linear"), or None without one."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    return [targets] if isinstance(targets, str) else sorted(targets)


def summarize(fitted: Fitted) -> dict[str, Any]:
    """The stage's metrics: losses, best step, steps, time, throughput, trainable parameters."""
    tr, state = fitted.trainer, fitted.trainer.state
    history = state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    seconds = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), 0.0)
    trainable, total = count_params(tr.model)
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
        "lora_targets": lora_targets(tr.model),
        "precision": "bf16" if tr.args.bf16 else "fp16" if tr.args.fp16 else "fp32",
        "packed": isinstance(tr.data_collator, DataCollatorWithFlattening),
        "processes": tr.accelerator.num_processes,  # > 1: accelerate launch; throughput is all of them together
        "examples_per_step": tr.args.per_device_train_batch_size * tr.args.gradient_accumulation_steps,
    }


def best_eval(history: list[dict], best_step: int | None) -> dict[str, float]:
    """The eval_* values logged at the best step (loss, and accuracy / F1 for classification)."""
    at = [h for h in history if "eval_loss" in h and h["step"] == best_step]
    return {k: v for k, v in at[-1].items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k} \
        if at else {}


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


def train(run: Run, cfg: Config) -> dict[str, Any]:
    """Stage 04 from top to bottom: fit (or continue), save adapter and final model, record what happened."""
    train_rows, val_rows = load_splits(run)
    model_dir = run.model
    samples = model_dir / "samples.jsonl"
    fitted = fit(cfg, train_rows, val_rows, model_dir, samples=samples)
    if not fitted.trainer.is_world_process_zero():
        return {}  # under accelerate launch, one process writes
    history = fitted.trainer.state.log_history
    metrics = {"method": cfg.tune.method, "train_file": run.train_file.name, "train_rows": len(train_rows),
               "validation_rows": len(val_rows), **summarize(fitted)}
    save_model(fitted, model_dir / "adapter" if cfg.tune.method in PEFT_METHODS else None,
               model_dir / "final", cfg)
    runs.write_json(model_dir / "log_history.json", history)
    fig = loss_figure(history, metrics["best_step"], metrics["planned_steps"])
    artifacts.figure(run, STAGE, "loss", fig, "Training loss (each logging step) and validation loss (each "
                     "evaluation, step 0 = before tuning). The dashed line is the checkpoint with the lowest "
                     "validation loss: that one became model/final.")
    plots.plt.close(fig)
    if samples.is_file():
        artifacts.table(run, STAGE, "samples", pd.DataFrame(data.read_jsonl(samples)),
                        "Answers to fixed validation prompts during tuning (step 0 = the base model).")
    return runs.record_metrics(run, STAGE, metrics)


# ---------------------------------------------------------------- command line

def is_main_process() -> bool:
    """False in the other processes of an `accelerate launch`: one process writes the run's files."""
    return int(os.environ.get("RANK", "0")) == 0


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
    started, record = time.perf_counter(), args.record_stage and is_main_process()
    try:
        run, cfg = runs.open_run(args.run_dir)
        if record:
            runs.record_stage(run, NOTEBOOK, status="running", processes=world_size())
        if args.set:
            cfg = apply_overrides(cfg, args.set)
            if is_main_process():  # atomic: the other processes may be reading it right now
                runs.write_text(run.config_file, to_yaml(cfg))  # config.yaml says what ran
        if cfg.tune.cv_folds and world_size() > 1:
            raise ConfigError("tune.cv_folds: cross-validation trains its folds in one process; run this stage "
                              "without accelerate launch, or set tune.cv_folds to 0")
        if args.search or cfg.search.enabled:
            from . import search  # here: search imports tune

            cfg = search.apply_best(run, cfg, search.run_search(run, cfg))
        metrics = train(run, cfg)
        if cfg.tune.cv_folds:
            from . import crossval  # here: crossval imports tune

            metrics["cv"] = crossval.cross_validate(run, cfg)
    except BaseException as e:
        if record and "run" in locals():
            runs.record_stage(run, NOTEBOOK, status="failed", seconds=round(time.perf_counter() - started, 1),
                              error=f"{type(e).__name__}: {e}")
        if isinstance(e, (ConfigError, data.DataError, chat.ChatTemplateError)):
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
