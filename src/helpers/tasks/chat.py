"""The chat task: a causal LM learns the assistant's turns of multi-turn conversations.

Rows are `{"id", "messages": [{"role", "content"}, ...]}`; only assistant tokens carry the
loss (helpers.chat builds the mask from the model's chat template). Batches are packed where
the architecture masks packed rows per example. At each evaluation the model answers a few
fixed validation prompts (model/samples.jsonl).
"""
from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from peft import TaskType
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, TrainerCallback

from .. import chat, data, models, schema
from ..config import Config, ConfigError

# Decoders whose attention masks packed rows per example (transformers' masking utils detect
# them from restarting position ids), and which share the llama-like projection names.
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite")
PEFT_TASK = TaskType.CAUSAL_LM
PREDICTION_LOSS_ONLY = True  # chat logits are (tokens x 49k vocab): evaluation never keeps them
BF16_FROZEN_BASE = True  # adapters over a bf16 copy of the frozen base (helpers.adapters.frozen_dtype)
compute_metrics = None  # the validation loss is the chat metric


def labels(cfg: Config, rows: list[dict]) -> None:
    """Chat has no label set."""
    return None


def encode(tokenizer, rows: list[dict], labels: None, max_length: int, split: str) -> Dataset:
    """Chats as token ids with assistant-only labels; rows left with no loss token are an error."""
    encoded = [chat.encode(tokenizer, r["messages"], max_length) for r in rows]
    empty = [r["id"] for r, e in zip(rows, encoded) if e.n_loss_tokens == 0]
    if empty:
        raise schema.DataError(
            f"{len(empty)} {split} example(s) have no assistant token left after cutting to model.max_length="
            f"{max_length}, so they cannot teach anything: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}. "
            f"Raise model.max_length, or shorten their prompts (02-clean drops rows over clean.max_tokens).")
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})


def show_example(tokenizer, row: dict, max_length: int) -> str:
    """One training chat as the model sees it, the tokens that carry the loss in [[...]]."""
    example = chat.encode(tokenizer, row["messages"], max_length)
    return (f"{example.n_loss_tokens} of {len(example.input_ids)} tokens carry the loss:\n\n"
            + chat.show_mask(tokenizer, example))


def load_base(cfg: Config, labels: None, dtype=None):
    """The causal LM to tune (dtype: a bf16 copy of a frozen base, else model.dtype's)."""
    return models.load_causal_lm(cfg, dtype=dtype)


def modules_to_save(model) -> None:
    """A causal LM has no new head to train in full."""
    return None


def packs(cfg: Config, model_type: str) -> bool:
    """Whether batches are packed: tune.packing, for decoders known to mask packed rows per example."""
    # Other models could let examples attend to each other, so they get padded batches.
    return cfg.tune.packing and model_type in DECODERS


def collator(cfg: Config, tokenizer, model_type: str):
    """Packed without padding (tune.packing), else padded to the batch's longest chat."""
    if packs(cfg, model_type):
        # One row per batch, position ids restarting at each example, the first label of each
        # example ignored: no pad token is computed and no example sees another.
        return DataCollatorWithFlattening()
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=chat.IGNORE)


def loss_weights(cfg: Config, rows: list[dict], labels: None) -> None:
    """Chat has no class weights."""
    if cfg.tune.class_weights:
        raise ConfigError("tune.class_weights: class weights are for classification; set it to false for chat")
    return None


def callbacks(cfg: Config, tokenizer, val_rows: list[dict], samples: Path | None, resumed_step: int) -> list:
    """Answers to the first tune.sample_prompts validation prompts at each evaluation (model/samples.jsonl)."""
    t = cfg.tune
    if samples is None or not val_rows or not t.sample_prompts:
        return []
    _trim_samples(samples, resumed_step)
    return [SampleCallback(tokenizer, val_rows[: t.sample_prompts], samples, t.sample_max_new_tokens)]


class SampleCallback(TrainerCallback):
    """Answer a few fixed validation prompts at each evaluation, step 0 included (model/samples.jsonl)."""

    def __init__(self, tokenizer, rows: list[dict], path: Path, max_new_tokens: int):
        self.tokenizer, self.path, self.max_new_tokens = tokenizer, path, max_new_tokens
        self.prompts = [(chat.answered_prompt(r["messages"]), chat.prompt_ids(tokenizer, r["messages"]))
                        for r in rows]

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


def _trim_samples(path: Path, upto_step: int) -> None:
    """Drop the samples after a checkpoint's step (all on a fresh start): a resumed run makes them again."""
    rows = data.read_jsonl(path) if path.is_file() and upto_step else []
    data.write_jsonl(path, [r for r in rows if r["step"] <= upto_step])
