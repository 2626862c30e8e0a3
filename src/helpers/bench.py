"""Benchmark: our training and evaluation paths against the usual recipes, on the same work,
measured against this machine's own matmul ceiling.

    python -m helpers.bench [--steps 30] [--batch-size 8] [--max-length 128] [--model NAME] [--out bench/]
                            [--sets pairs,multiturn,airline] [--paths ours,pipeline,docs,trl]
                            [--serving yes|no|only]

First the ceiling: the model's own projection matmuls (hidden and MLP shapes from its config) at
each data set's tokens per optimizer step, forward plus the input gradient LoRA training needs,
in bf16 and fp32 (`matmul_flops_per_s`), and the FLOPs one trained token needs
(`flops_per_token`, counted from the config). Then the training paths, each in its own process
(so peak memory is its own), on the same data, model, LoRA configuration, learning rate, seed
and number of optimizer steps, on three data sets:
  pairs      the chatterbot pairs (short: ~56 tokens), cap --max-length
  multiturn  multi-turn chats of real lengths recombined from the bundled support chats, cap 256
  airline    the airline tweets, for the classifier paths
Chat paths:
  ours      helpers.tune.fit with the bench's knobs (no validation during training)
  pipeline  helpers.tune.fit as stage 04 calls it, with params/chat-faq.yaml as it is (its cap,
            its batch, the step-0 validation and sample answers), for the bench's steps
  docs      the transformers/PEFT documentation recipe: Trainer, fp32, padding to the longest in
            the batch, loss on every token (DataCollatorForLanguageModeling)
  trl       TRL's SFTTrainer with its defaults (bf16, gradient checkpointing, loss on every token)
Classifier paths (params/sentiment-airline.yaml's model, batch, lr and cap): ours (tune.fit, no
validation), pipeline (the same with its step-0 validation), docs (Trainer, fp32,
DataCollatorWithPadding to the longest; the same LoRA adapter).
Each reports wall time, the training loop's time and its optimizer steps' time (the same Trainer
callback in every path), tokens/s, achieved FLOP/s over the steps as a share of the bf16 and
fp32 ceilings, peak resident memory, where the wall time outside the loop goes (model
resolution, load, adapters and bf16 copy, tokenization, Trainer setup; validation and samples
inside the loop), and the same yardstick after training: mean assistant-token cross-entropy on
held-out chats (fp32), or validation loss and macro F1 on held-out tweets. Then evaluation:
batched perplexity and batched KV-cache generation against the same code one example at a time.
Then serving (helpers.servebench): the base model behind `transformers serve` under 1, 4 and 16
concurrent clients beside in-process batched generate (`--serving only` runs just that table).
Writes bench/<timestamp>/results.json and results.md; the last line printed is the speed-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from . import paths

PATHS = ["ours", "pipeline", "docs", "trl"]  # chat
CLS_PATHS = ["ours", "pipeline", "docs"]  # classifier
SETS = ["pairs", "multiturn", "airline"]


# ---------------------------------------------------------------- shared setup

def bench_config(spec: dict):
    """The chat-faq config with the bench's shared knobs applied (what `ours` trains with)."""
    from .config import load_config

    over = {"tune.max_steps": spec["steps"], "tune.batch_size": spec["batch_size"],
            "tune.learning_rate": spec["lr"], "tune.warmup_ratio": 0.0, "tune.scheduler": "constant",
            "tune.lora.r": spec["r"], "tune.lora.alpha": spec["alpha"], "tune.lora.dropout": 0.0,
            "model.max_length": set_max_length(spec), "experiment.seed": spec["seed"],
            "tune.save_steps": 10_000, "tune.logging_steps": 10_000}
    if spec.get("model"):
        over["model.name_or_path"] = spec["model"]
    return load_config(paths.PARAMS / "chat-faq.yaml", over)


def pipeline_config(spec: dict):
    """The bundled experiment's own config (chat-faq, or sentiment-airline for classifiers), only
    its steps (and seed, model) set to the bench's: what `make pipeline` trains with."""
    from .config import load_config

    over = {"tune.max_steps": spec["steps"], "experiment.seed": spec["seed"]}
    if spec.get("model") and spec["set"] != "airline":
        over["model.name_or_path"] = spec["model"]
    return load_config(paths.PARAMS / ("sentiment-airline.yaml" if spec["set"] == "airline" else "chat-faq.yaml"), over)


def set_max_length(spec: dict) -> int:
    """The token cap of the bench's data set: --max-length for short pairs, 256 (chat-faq's own) for multi-turn."""
    return spec["multiturn_max_length"] if spec["set"] == "multiturn" else spec["max_length"]


def bench_rows(spec: dict, n: int | None = None) -> tuple[list[dict], list[dict]]:
    """The set's rows, shuffled with the seed: n (default steps*batch) to train on, val_examples to validate."""
    n = spec["steps"] * spec["batch_size"] if n is None else n
    if spec["set"] == "multiturn":
        return multiturn_rows(spec, n)
    from . import data

    rows = data.load(bench_config(spec)).rows
    random.Random(spec["seed"]).shuffle(rows)
    return rows[:n], rows[-spec["val_examples"]:]  # the tail: the same validation rows for any n


def multiturn_rows(spec: dict, n: int) -> tuple[list[dict], list[dict]]:
    """Multi-turn chats of real lengths, recombined from the 40 bundled support chats.

    Each new chat copies a real chat's system prompt and number of user/assistant exchanges and
    fills them with exchanges drawn from the other chats, so the lengths follow the real ones
    (the bundled chats: mean 144 tokens, p95 237 under SmolLM2's template; the issue's 800 user
    chats: mean 135, p95 249). Exchanges are split 80/20 first, so no validation exchange is
    trained on.
    """
    from . import data
    from .config import load_config

    rng = random.Random(spec["seed"])
    chats = data.load(load_config(paths.PARAMS / "chat-faq.yaml", {"data.source": "support"})).rows
    pool = [m["messages"][i:i + 2] for m in chats for i in range(len(m["messages"]) - 1)
            if m["messages"][i]["role"] == "user" and m["messages"][i + 1]["role"] == "assistant"]
    rng.shuffle(pool)
    cut = len(pool) // 5

    def make(k: int, exchanges: list[list[dict]], tag: str) -> list[dict]:
        rows = []
        for j in range(k):
            real = rng.choice(chats)["messages"]
            turns = sum(m["role"] == "assistant" for m in real)
            msgs = [m for m in real if m["role"] == "system"]
            for ex in rng.sample(exchanges, min(turns, len(exchanges))):
                msgs += ex
            rows.append({"id": f"multiturn-{tag}-{j}", "messages": msgs, "topic": "support", "source": "support"})
        return rows

    return make(n, pool[cut:], "train"), make(spec["val_examples"], pool[:cut], "val")


def token_counts(tokenizer, rows: list[dict], max_length: int) -> tuple[int, int]:
    """All tokens and assistant (loss) tokens of rows under the chat template, capped at max_length."""
    from . import chat

    enc = [chat.encode(tokenizer, r["messages"], max_length) for r in rows]
    return sum(len(e.input_ids) for e in enc), sum(e.n_loss_tokens for e in enc)


def validation_loss(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """Mean assistant-token cross-entropy (nats), fp32: the one yardstick for every path."""
    import numpy as np

    from .evaluation import token_nlls

    nlls = token_nlls(model, tokenizer, rows, max_length, batch_size=16)
    return float(np.concatenate(nlls).mean())


def lora_config(spec: dict, model, task: str = "CAUSAL_LM", heads: list[str] | None = None):
    """The LoRA adapter every path uses: the same rank, alpha, targets."""
    from peft import LoraConfig, TaskType

    from .tune import TARGET_MODULES

    return LoraConfig(task_type=getattr(TaskType, task), r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                      target_modules=TARGET_MODULES.get(model.config.model_type, "all-linear"), modules_to_save=heads)


# ---------------------------------------------------------------- the ceiling

def projection_shapes(config) -> list[tuple[int, int]]:
    """(in, out) features of each linear projection of one transformer block, from a model config.

    Attention: q and o are hidden x (heads * head_dim); k and v use the key-value heads (grouped
    query attention). MLP: gated (gate, up, down) for configs with num_key_value_heads (the
    Llama family), else two matrices (BERT's intermediate and output).
    """
    h, ffn = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    attn = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h)]
    mlp = [(h, ffn), (h, ffn), (ffn, h)] if hasattr(config, "num_key_value_heads") else [(h, ffn), (ffn, h)]
    return attn + mlp


def flops_per_token(config, loss_share: float, causal: bool = True) -> dict[str, float]:
    """FLOPs one trained token needs under LoRA, from the model config.

    A matmul of a token's (in,) vector by an (in, out) weight is 2*in*out FLOPs. LoRA training
    needs the forward pass and the gradient with respect to each projection's input (to reach
    the adapters below it), not the frozen weights' own gradient: 2 matmuls, 4*in*out per
    projection per layer. The output layer (hidden x vocab) is counted at the labelled positions
    only (loss_share of the tokens), as the work the loss needs; a classifier's head is one
    position per example (left out, as are the adapters' rank-r matmuls, the attention scores
    and the embeddings: a few percent at these lengths).
    """
    blocks = config.num_hidden_layers * sum(4 * i * o for i, o in projection_shapes(config))
    head = 4 * config.hidden_size * config.vocab_size * loss_share if causal else 0.0
    return {"blocks": float(blocks), "head": float(head), "total": float(blocks + head)}


def matmul_flops_per_s(shapes: list[tuple[int, int]], tokens: int, dtype, seconds: float = 2.0) -> float:
    """The machine's FLOP/s on one block's projection matmuls at `tokens` rows: forward (F.linear, as
    nn.Linear runs it) and input gradient (grad @ W), each shape's fastest pass over `seconds`.

    Each shape keeps its own best time (a pass is a few milliseconds), so on a machine shared with
    other work the ceiling is what the cores do when they are free, not an average over the load.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(tokens, i, generator=g).to(dtype), torch.randn(o, i, generator=g).to(dtype),
             torch.randn(tokens, o, generator=g).to(dtype)) for i, o in shapes]  # x (T, in), W (out, in), dy (T, out)
    best = [float("inf")] * len(mats)
    with torch.no_grad():
        for x, w, dy in mats:  # warm-up: allocations, kernel choice
            F.linear(x, w), dy @ w
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or best[-1] == float("inf"):
            for k, (x, w, dy) in enumerate(mats):
                start = time.perf_counter()
                F.linear(x, w)  # (T, out): the forward pass
                dy @ w  # (T, in): the gradient with respect to the input
                best[k] = min(best[k], time.perf_counter() - start)
    return sum(4 * tokens * i * o for i, o in shapes) / sum(best)


def ceiling_bench(spec: dict) -> dict[str, Any]:
    """The machine's matmul ceiling for each data set's model shapes at its packed batch's token
    count (tokens per optimizer step), bf16 and fp32, and the FLOPs per trained token."""
    import torch
    from transformers import AutoConfig

    from . import models

    out = {}
    for name in spec["sets"]:
        s = {**spec, "set": name}
        classify = name == "airline"
        cfg = pipeline_config(s) if classify else bench_config(s)
        config = AutoConfig.from_pretrained(models.resolve(models.model_name(cfg)))
        tok = models.load_tokenizer(cfg)
        if classify:
            train, _ = classifier_rows(s, cfg.tune.batch_size)
            ids = tok([r["text"] for r in train], truncation=True, max_length=cfg.model.max_length)["input_ids"]
            tokens, loss_tokens, steps = sum(map(len, ids)), 0, s["steps"]
        else:
            train, _ = bench_rows(s)
            tokens, loss_tokens = token_counts(tok, train, set_max_length(s))
            steps = s["steps"]
        per_step = max(1, round(tokens / steps))
        shapes = projection_shapes(config)
        out[name] = {"tokens_per_step": per_step, "shapes": shapes,
                     "flops_per_token": flops_per_token(config, loss_tokens / tokens, causal=not classify),
                     "bf16": matmul_flops_per_s(shapes, per_step, torch.bfloat16, spec["ceiling_seconds"]),
                     "fp32": matmul_flops_per_s(shapes, per_step, torch.float32, spec["ceiling_seconds"]),
                     "threads": torch.get_num_threads()}
    return out


# ---------------------------------------------------------------- where the wall time goes

class Phases:
    """Exclusive seconds per named phase, from functions wrapped in place (in a worker process only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []

    def wrap(self, owner, attr: str, name: str) -> None:
        """Time every call of owner.attr as phase `name` (time in nested wrapped calls goes to theirs)."""
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                total = time.perf_counter() - start
                self.seconds[name] = self.seconds.get(name, 0.0) + total - inner
                if self._stack:
                    self._stack[-1][1] += total

        setattr(owner, attr, timed)


def instrument(phases: Phases) -> None:
    """Wrap what every path does outside its optimizer steps: model resolution (GGUF conversion),
    loading, adapters and the bf16 copy (tune.build_model beyond the load), tokenization, Trainer
    construction, evaluation and sample answers."""
    import datasets
    import transformers

    from . import models, tune

    phases.wrap(models, "resolve", "resolve")
    phases.wrap(models, "load_causal_lm", "load")
    phases.wrap(models, "load_classifier", "load")
    phases.wrap(tune, "build_model", "adapters+bf16")
    phases.wrap(tune, "encode_splits", "tokenize")
    phases.wrap(datasets.Dataset, "map", "tokenize")
    phases.wrap(transformers.Trainer, "__init__", "trainer setup")
    phases.wrap(transformers.Trainer, "evaluate", "evaluate")
    phases.wrap(tune.SampleCallback, "_sample", "samples")


# ---------------------------------------------------------------- the chat paths

class LoopTimer(TrainerCallback):
    """Seconds from the Trainer's train begin to its end, and in optimizer steps alone: the same
    clocks for every path."""

    seconds = 0.0
    step_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._step

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


def train_ours(spec: dict, out: Path, timer):
    """helpers.tune.fit with the bench's shared knobs (no validation during training)."""
    from . import tune

    cfg = bench_config(spec)
    train, _ = bench_rows(spec)
    fitted = tune.fit(cfg, train, [], out, callbacks=[timer], resume=False)
    return fitted.trainer.model, fitted.tokenizer, train, cfg.model.max_length


def train_pipeline(spec: dict, out: Path, timer):
    """helpers.tune.fit exactly as stage 04 calls it, with chat-faq's own config (its cap, batch,
    step-0 validation and sample answers) for the bench's steps: what `make pipeline` runs."""
    from . import tune

    cfg = pipeline_config(spec)
    train, val = bench_rows(spec, spec["steps"] * cfg.tune.batch_size)
    fitted = tune.fit(cfg, train, val, out, callbacks=[timer], samples=out / "samples.jsonl", resume=False)
    return fitted.trainer.model, fitted.tokenizer, train, cfg.model.max_length


def train_docs(spec: dict, out: Path, timer):
    """The documentation recipe: fp32 Trainer, pad to longest, labels = inputs (every token)."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from . import models

    cfg = bench_config(spec)
    train, _ = bench_rows(spec)
    tok = models.load_tokenizer(cfg)
    model = models.load_causal_lm(cfg)
    model = get_peft_model(model, lora_config(spec, model))
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in train]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=cfg.model.max_length, add_special_tokens=False),
        batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=spec["batch_size"],
                             max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                             seed=spec["seed"], report_to="none", save_strategy="no", logging_steps=10_000,
                             disable_tqdm=True, use_cpu=not _cuda())
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False)).train()
    return model, tok, train, cfg.model.max_length


def train_trl(spec: dict, out: Path, timer):
    """TRL's SFTTrainer with its defaults, given the shared knobs (steps, batch, lr, cap, LoRA)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from . import models

    cfg = bench_config(spec)
    train, _ = bench_rows(spec)
    tok = models.load_tokenizer(cfg)
    model = models.load_causal_lm(cfg)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                     learning_rate=spec["lr"], lr_scheduler_type="constant", max_length=cfg.model.max_length,
                     seed=spec["seed"], report_to="none", save_strategy="no", logging_steps=10_000,
                     disable_tqdm=True, use_cpu=not _cuda())
    trainer = SFTTrainer(model=model, args=args, processing_class=tok, peft_config=lora_config(spec, model),
                         callbacks=[timer],
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train]))
    trainer.train()
    return trainer.model, tok, train, cfg.model.max_length


TRAINERS = {"ours": train_ours, "pipeline": train_pipeline, "docs": train_docs, "trl": train_trl}


def worker(path: str, spec: dict) -> dict[str, Any]:
    """Run one chat training path in this process and measure it."""
    import torch

    torch.manual_seed(spec["seed"])
    phases = Phases()
    instrument(phases)
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, tok, train, max_length = TRAINERS[path](spec, Path(tmp), timer)
        seconds = time.perf_counter() - start
    _, val = bench_rows(spec)
    tokens, loss_tokens = token_counts(tok, train, max_length)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before the fp32 copy below
    model = model.float().eval()  # the yardstick below runs every path's model in fp32
    return {"path": path, "set": spec["set"], "seconds": seconds, "train_seconds": timer.seconds,
            "step_seconds": timer.step_seconds, "phases": phases.seconds, "examples": len(train),
            "max_length": max_length, "tokens": tokens, "loss_tokens": loss_tokens,
            "tokens_per_s": tokens / timer.seconds, "step_tokens_per_s": tokens / timer.step_seconds,
            "loss_tokens_per_s": loss_tokens / timer.seconds, "peak_rss_gib": rss,
            "val_examples": len(val), "val_loss": validation_loss(model, tok, val, set_max_length(spec))}


# ---------------------------------------------------------------- the classifier paths

def classifier_rows(spec: dict, batch_size: int) -> tuple[list[dict], list[dict]]:
    """The airline tweets, shuffled with the seed: steps*batch_size to train on, cls_val_examples to score."""
    from . import data

    rows = data.load(pipeline_config(spec)).rows
    random.Random(spec["seed"]).shuffle(rows)
    return rows[:spec["steps"] * batch_size], rows[-spec["cls_val_examples"]:]


def classify_ours(spec: dict, out: Path, timer, validate: bool = False):
    """helpers.tune.fit with sentiment-airline's own config; `validate`: with its validation pass
    at step 0 (as stage 04 runs it), else none."""
    from datasets import Dataset

    from . import tune

    cfg = pipeline_config(spec)
    train, val = classifier_rows(spec, cfg.tune.batch_size)
    if not validate:  # tune.encode_texts fails on no rows (the tokenizer's IndexError); an empty split instead
        encode = tune.encode_texts
        tune.encode_texts = lambda tok, rows, *a: encode(tok, rows, *a) if rows else Dataset.from_dict(
            {"input_ids": [], "attention_mask": [], "labels": []})
    fitted = tune.fit(cfg, train, val if validate else [], out, callbacks=[timer], resume=False)
    return fitted.trainer.model, fitted.tokenizer, train, cfg


def classify_docs(spec: dict, out: Path, timer):
    """The documentation recipe for sequence classification: Trainer, fp32, DataCollatorWithPadding
    to the longest in the batch; the same model, LoRA adapter, batch, lr, cap and steps as ours."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from . import models

    cfg = pipeline_config(spec)
    train, _ = classifier_rows(spec, cfg.tune.batch_size)
    labels = list(cfg.data.labels)
    tok = models.load_tokenizer(cfg)
    model = models.load_classifier(cfg, labels)
    model = get_peft_model(model, lora_config(spec, model, "SEQ_CLS", ["classifier"]))
    ds = Dataset.from_dict({"text": [r["text"] for r in train], "label": [labels.index(r["label"]) for r in train]})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=cfg.model.max_length), batched=True,
                remove_columns=["text"])
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.tune.batch_size,
                             max_steps=spec["steps"], learning_rate=cfg.tune.learning_rate,
                             lr_scheduler_type="constant", seed=spec["seed"], report_to="none",
                             save_strategy="no", logging_steps=10_000, disable_tqdm=True, use_cpu=not _cuda())
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
            data_collator=DataCollatorWithPadding(tok)).train()
    return model, tok, train, cfg


def classifier_worker(path: str, spec: dict) -> dict[str, Any]:
    """Run one classifier training path in this process and measure it (validation loss, macro F1)."""
    import numpy as np
    import torch
    from sklearn.metrics import f1_score

    from .evaluation import predict_proba

    torch.manual_seed(spec["seed"])
    phases = Phases()
    instrument(phases)
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if path == "docs":
            model, tok, train, cfg = classify_docs(spec, Path(tmp), timer)
        else:
            model, tok, train, cfg = classify_ours(spec, Path(tmp), timer, validate=path == "pipeline")
        seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    labels = list(cfg.data.labels)
    tokens = sum(len(x) for x in tok([r["text"] for r in train], truncation=True,
                                     max_length=cfg.model.max_length)["input_ids"])
    _, val = classifier_rows(spec, cfg.tune.batch_size)
    model = model.float().eval()
    probs = predict_proba(model, tok, [r["text"] for r in val], cfg.model.max_length, batch_size=64)  # (N, C)
    y = np.array([labels.index(r["label"]) for r in val])
    return {"path": path, "set": "airline", "seconds": seconds, "train_seconds": timer.seconds,
            "step_seconds": timer.step_seconds, "phases": phases.seconds, "examples": len(train),
            "max_length": cfg.model.max_length, "batch_size": cfg.tune.batch_size, "tokens": tokens,
            "tokens_per_s": tokens / timer.seconds, "step_tokens_per_s": tokens / timer.step_seconds,
            "peak_rss_gib": rss, "val_examples": len(val),
            "val_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
            "f1_macro": float(f1_score(y, probs.argmax(1), average="macro"))}


# ---------------------------------------------------------------- evaluation timing

def eval_bench(spec: dict) -> dict[str, Any]:
    """Batched perplexity and KV-cache generation against the same code one example at a time."""
    from . import models
    from .evaluation import generate, token_nlls

    cfg = bench_config(spec)
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg)
    _, val = bench_rows(spec)
    prompts = val[: spec["gen_examples"]]
    out = {}
    for name, bs in (("one_at_a_time", 1), ("batched", spec["eval_batch_size"])):
        t0 = time.perf_counter()
        token_nlls(model, tok, val, spec["max_length"], batch_size=bs)
        t1 = time.perf_counter()
        generate(model, tok, prompts, spec["max_new_tokens"], batch_size=bs)
        t2 = time.perf_counter()
        out[name] = {"perplexity_s": t1 - t0, "generation_s": t2 - t1, "total_s": t2 - t0}
    out["speedup"] = out["one_at_a_time"]["total_s"] / out["batched"]["total_s"]
    return out


def cached_load_seconds(spec: dict) -> dict[str, float]:
    """Seconds to load the cached base model in a fresh process: the first load (which also
    imports the model code) and a second one (the load alone)."""
    from . import models

    cfg = bench_config(spec)
    models.resolve(models.model_name(cfg))  # converts the GGUF once if needed; not timed
    times = []
    for _ in range(2):
        start = time.perf_counter()
        models.load_causal_lm(cfg)
        times.append(time.perf_counter() - start)
    return {"first_s": times[0], "seconds": times[1]}


def serving_bench(spec: dict) -> dict[str, Any]:
    """The serving table on the bench's base model (helpers.servebench)."""
    from . import models, servebench

    folder = models.resolve(models.model_name(bench_config(spec)))
    _, val = bench_rows(spec)
    return servebench.run(folder, val[: spec["serve_prompts"]], spec["max_new_tokens"], spec["eval_batch_size"])


# ---------------------------------------------------------------- driver

def run_in_subprocess(mode: str, spec: dict) -> dict[str, Any]:
    """Run `python -m helpers.bench --worker mode` and return its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "helpers.bench", "--worker", mode, "--spec", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {mode!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHAT_LABELS = {"ours": "ours (tune.fit, bench knobs)", "pipeline": "pipeline (chat-faq.yaml as is)",
               "docs": "docs: Trainer, fp32, pad to longest, loss on every token",
               "trl": "TRL `SFTTrainer` defaults (bf16, gradient checkpointing)"}
CLS_LABELS = {"ours": "ours (tune.fit, sentiment-airline.yaml, no validation)",
              "pipeline": "pipeline (the same, with its step-0 validation)",
              "docs": "docs: Trainer, fp32, `DataCollatorWithPadding` to the longest"}
SET_NAMES = {"pairs": "short chatterbot pairs", "multiturn": "multi-turn support chats", "airline": "airline tweets"}
PHASES = ["resolve", "load", "adapters+bf16", "tokenize", "trainer setup", "evaluate", "samples"]


def shares(r: dict, ceiling: dict) -> tuple[float, float, float]:
    """A path's achieved FLOP/s over its optimizer steps, and its share of the bf16 and fp32 ceilings."""
    achieved = ceiling["flops_per_token"]["total"] * r["tokens"] / r["step_seconds"]
    return achieved, achieved / ceiling["bf16"], achieved / ceiling["fp32"]


def ceiling_lines(results: dict[str, Any]) -> list[str]:
    """The ceiling table: per data set, tokens per step, FLOPs per token, bf16 and fp32 matmul FLOP/s."""
    rows = ["| ceiling (projection matmuls, forward + input gradient) | tokens/step | MFLOP/token | "
            "bf16 GFLOP/s | fp32 GFLOP/s |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in results["ceiling"].items():
        f = c["flops_per_token"]
        rows.append(f"| {SET_NAMES[name]} | {c['tokens_per_step']} | {f['total'] / 1e6:.0f} "
                    f"(blocks {f['blocks'] / 1e6:.0f} + head {f['head'] / 1e6:.0f}) | {c['bf16'] / 1e9:.1f} | "
                    f"{c['fp32'] / 1e9:.1f} |")
    rows.append("FLOPs per trained token from the model config: 4 x in x out per projection per layer "
                "(forward + input gradient; LoRA needs no gradient of the frozen weights), plus the output layer "
                "4 x hidden x vocab at the labelled share of positions; adapters, attention scores and embeddings left out.")
    return rows


def train_lines(results: dict[str, Any]) -> list[str]:
    """The training tables (chat per set, classifier) with shares of the ceiling, and where the wall time goes."""
    rows = []
    for name in results["spec"]["sets"]:
        runs = [r for r in results["train"] if r["set"] == name]
        if not runs:
            continue
        c = results["ceiling"][name]
        cls = name == "airline"
        rows += ["", f"**{SET_NAMES[name]}**", "",
                 f"| path | wall s | loop s | step s | tokens/s (loop) | {'macro F1' if cls else 'loss tokens/s'} | "
                 "GFLOP/s (steps) | % bf16 ceiling | % fp32 ceiling | peak RSS GiB | val loss |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in runs:
            achieved, bf, fp = shares(r, c)
            extra = f"{r['f1_macro']:.4f}" if cls else f"{r['loss_tokens_per_s']:.0f}"
            rows.append(f"| {(CLS_LABELS if cls else CHAT_LABELS)[r['path']]} | {r['seconds']:.1f} | "
                        f"{r['train_seconds']:.1f} | {r['step_seconds']:.1f} | {r['tokens_per_s']:.0f} | {extra} | "
                        f"{achieved / 1e9:.1f} | {100 * bf:.0f}% | {100 * fp:.0f}% | {r['peak_rss_gib']:.2f} | "
                        f"{r['val_loss']:.4f} |")
        rows += ["", "| outside the loop, s | " + " | ".join(PHASES) + " | other | total outside |",
                 "| --- |" + " ---: |" * (len(PHASES) + 2)]
        for r in runs:
            ph = r["phases"]
            inside = ph.get("evaluate", 0.0) + ph.get("samples", 0.0)  # step-0 validation runs inside the loop
            outside = r["seconds"] - r["train_seconds"]
            other = outside - sum(v for k, v in ph.items() if k not in ("evaluate", "samples"))
            rows.append(f"| {r['path']} | " + " | ".join(f"{ph.get(k, 0.0):.1f}" for k in PHASES)
                        + f" | {other:.1f} | {outside:.1f} |")
            if inside:
                rows.append(f"| ({r['path']}: the loop's {inside:.1f} s of validation and samples are inside the "
                            f"loop, {r['val_examples']} examples at {r['val_examples'] / max(ph.get('evaluate', 0), 1e-9):.2f}/s) |"
                            + " |" * (len(PHASES) + 2))
        s = results["summary"].get(name)
        if s:
            rows += ["", f"Over the best reference ({s['best_reference']}): {s['train_speedup']:.2f}x in the loop, "
                         f"{s['wall_speedup']:.2f}x in wall time; "
                     + (f"macro F1 {s['f1_gap']:+.4f}" if cls else f"validation loss {s['val_loss_gap_pct']:+.2f}%")
                     + " vs it." + (f" Pipeline path: {s['pipeline_ratio']:.2f}x ours' tokens/s in the loop."
                                     if s.get("pipeline_ratio") else "")]
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables, the way the README shows them."""
    from . import servebench

    if "eval" not in results:  # --serving only
        return "\n".join([servebench.markdown(results["serving"]), "", f"Machine: {results['machine']}. "
                                                                          f"Spec: {json.dumps(results['spec'])}"])
    rows = ceiling_lines(results) + train_lines(results)
    e = results["eval"]
    rows += ["", "| evaluation | perplexity s | generation s | total s |", "| --- | ---: | ---: | ---: |"]
    for name in ("one_at_a_time", "batched"):
        rows.append(f"| {name} | {e[name]['perplexity_s']:.1f} | {e[name]['generation_s']:.1f} | {e[name]['total_s']:.1f} |")
    rows += ["", f"Evaluation speed-up: {e['speedup']:.2f}x. "
                 f"Cached base-model load: {results['cached_load']['seconds']:.2f} s "
                 f"({results['cached_load']['first_s']:.2f} s for the first load in a fresh process, model code imports included).",
             f"Machine: {results['machine']}. Spec: {json.dumps(results['spec'])}"]
    if results.get("serving"):
        rows += ["", servebench.markdown(results["serving"])]
    return "\n".join(rows)


def summary(train: list[dict]) -> dict[str, Any]:
    """Per data set: ours over the fastest reference in the loop and in wall time, and the quality gap to it."""
    out = {}
    for name in dict.fromkeys(r["set"] for r in train):
        runs = {r["path"]: r for r in train if r["set"] == name}
        refs = [r for p, r in runs.items() if p not in ("ours", "pipeline")]
        if "ours" not in runs or not refs:
            continue
        ours = runs["ours"]
        best = max(refs, key=lambda r: r["tokens_per_s"])
        s = {"best_reference": best["path"], "train_speedup": ours["tokens_per_s"] / best["tokens_per_s"],
             "wall_speedup": best["seconds"] / ours["seconds"],
             "val_loss_gap_pct": 100 * (ours["val_loss"] - best["val_loss"]) / best["val_loss"]}
        if "f1_macro" in ours:
            s["f1_gap"] = ours["f1_macro"] - best["f1_macro"]
        if "pipeline" in runs:
            s["pipeline_ratio"] = runs["pipeline"]["tokens_per_s"] / ours["tokens_per_s"]
        out[name] = s
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the workers (or, with --worker, be one)."""
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per training path")
    p.add_argument("--batch-size", type=int, default=8, help="chat examples per step (the classifier uses its config's)")
    p.add_argument("--max-length", type=int, default=128, help="token cap per example on the short pairs")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--model", default=None, help="any chat model name_or_path (default: the bundled SmolLM2)")
    p.add_argument("--paths", default=",".join(PATHS), help="which chat training paths to time")
    p.add_argument("--sets", default=",".join(SETS), help="data sets: pairs, multiturn (chat), airline (classifier)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(paths.ROOT / "bench"))
    p.add_argument("--serving", choices=["yes", "no", "only"], default="yes",
                   help="the serving table (a transformers serve server on 127.0.0.1 under 1/4/16 clients)")
    p.add_argument("--serve-prompts", type=int, default=16, help="requests per load level in the serving table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.spec)
        result = {"eval": eval_bench, "load": cached_load_seconds, "serving": serving_bench, "ceiling": ceiling_bench,
                  }.get(a.worker, lambda s: (classifier_worker if s["set"] == "airline" else worker)(a.worker, s))(spec)
        print(json.dumps(result))
        return 0
    spec = {"steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr, "model": a.model,
            "seed": a.seed, "r": 8, "alpha": 16, "val_examples": 64, "gen_examples": 16, "eval_batch_size": 16,
            "max_new_tokens": 32, "serve_prompts": a.serve_prompts, "set": "pairs", "sets": a.sets.split(","),
            "multiturn_max_length": 256, "cls_val_examples": 512, "ceiling_seconds": 2.0}
    out = Path(a.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    if a.serving == "only":
        return serving_only(spec, machine, out)
    print("ceiling ...", flush=True)
    results = {"spec": spec, "machine": machine, "ceiling": run_in_subprocess("ceiling", spec), "train": []}
    print("\n".join(ceiling_lines(results)), flush=True)
    for name in spec["sets"]:
        for path in (CLS_PATHS if name == "airline" else a.paths.split(",")):
            print(f"training path {path} on {SET_NAMES[name]} ...", flush=True)
            r = run_in_subprocess(path, {**spec, "set": name})
            results["train"].append(r)
            print(f"  {r['seconds']:.1f} s wall, {r['train_seconds']:.1f} s loop, {r['tokens_per_s']:.0f} tokens/s, "
                  f"{100 * shares(r, results['ceiling'][name])[1]:.0f}% of the bf16 ceiling, "
                  f"val loss {r['val_loss']:.4f}", flush=True)
    print("evaluation ...", flush=True)
    results["eval"] = run_in_subprocess("eval", spec)
    results["cached_load"] = run_in_subprocess("load", spec)
    if a.serving == "yes":
        print("serving ...", flush=True)
        results["serving"] = run_in_subprocess("serving", spec)
    results["summary"] = summary(results["train"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"written: {out}/results.md")
    print(final_line(results))
    return 0


def final_line(results: dict[str, Any]) -> str:
    """The last line: ours over the best reference on the short pairs (loop, evaluation, wall), then the other sets."""
    s = results["summary"]
    first = s.get("pairs") or {"best_reference": "-", "train_speedup": float("nan"), "wall_speedup": float("nan")}
    rest = "".join(f"; {SET_NAMES[k]} ({v['best_reference']}): {v['train_speedup']:.2f}x training, "
                   f"{v['wall_speedup']:.2f}x wall time" for k, v in s.items() if k != "pairs")
    return (f"speed-up over the best reference ({first['best_reference']}): {first['train_speedup']:.2f}x training, "
            f"{results['eval']['speedup']:.2f}x evaluation, {first['wall_speedup']:.2f}x wall time{rest}")


def machine_line() -> str:
    """CPU model, AMX or not, cores, GPU, and the load average now (the machine may be shared)."""
    import os

    model, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = next(l for l in info.splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    units = "AMX" if "amx_tile" in flags else "AVX-512 bf16, no AMX" if "avx512_bf16" in flags else "no bf16 units"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model} ({units}), {os.cpu_count()} CPUs, {_gpu()}, load average {load}, {datetime.now():%Y-%m-%d %H:%M}"


def serving_only(spec: dict, machine: str, out: Path) -> int:
    """`--serving only`: the serving table alone, written and printed like the full bench."""
    from . import servebench

    print("serving ...", flush=True)
    results = {"spec": spec, "machine": machine, "serving": run_in_subprocess("serving", spec)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"written: {out}/results.md")
    print(servebench.summary(results["serving"]))
    return 0


def _cuda() -> bool:
    """Whether a CUDA GPU is there (the references then run on it too)."""
    import torch

    return torch.cuda.is_available()


def _gpu() -> str:
    """The GPU's name, or 'no GPU'."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


if __name__ == "__main__":
    sys.exit(main())
