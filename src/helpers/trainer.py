"""Engine: the Trainer plus what it lacks for us (class-weighted loss, the packed loss at labelled
positions only, an exact validation loss, a step LR schedule, token counts for throughput).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from transformers import Trainer

from . import chat, inference, schema


class TuneTrainer(Trainer):
    """The Trainer plus what it lacks for us: class-weighted loss, a step LR schedule, token counts."""

    def __init__(self, *args, weights=None, step_schedule: tuple[int | None, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = weights
        self.step_schedule = step_schedule
        self.tokens_seen = 0  # real (non-pad) input tokens trained on in this process
        self.computed_tokens = 0  # input positions computed, padding included (helpers.budget's clock)
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
        """Causal-LM loss of a packed row, with logits only where a label follows (inference.labelled_nll).

        Same value as the model's own loss: summed token cross-entropy over the tokens that
        carry loss, divided by the tokens of the whole (accumulated) batch.
        """
        nll = inference.labelled_nll(model, inputs["labels"], **{k: v for k, v in inputs.items() if k != "labels"})
        loss = nll.sum()
        if not model.training:
            self._add_eval_sums(loss.detach().double(), len(nll))
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(len(nll), 1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages it back
        return (loss, {}) if return_outputs else loss  # the Trainer reads no logits of a packed row

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
        self.computed_tokens += inputs["input_ids"].numel()
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
        raise schema.DataError(f"the validation split has {n_rows} row(s), fewer than the {processes} training "
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


