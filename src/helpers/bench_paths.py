"""The paths `make bench` times, each run in its own process by helpers.bench: ours, the pipeline's,
the documentation recipe and TRL for chat; ours, the pipeline's and the recipe for classifiers;
the evaluation and serving timings; and the phases outside each training loop."""
from __future__ import annotations

import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from . import paths
from .bench_ceiling import flops_per_token, matmul_flops_per_s, projection_shapes

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
            "tune.save_steps": 10_000, "tune.logging_steps": 10_000,
            "tune.time_budget_minutes": None}  # the bench's steps, not the bundled file's budget
    if spec.get("model"):
        over["model.name_or_path"] = spec["model"]
    return load_config(paths.PARAMS / "chat-faq.yaml", over)


def pipeline_config(spec: dict):
    """The bundled experiment's own config (chat-faq, or sentiment-airline for classifiers), only
    its steps (and seed, model) set to the bench's: what `make pipeline` trains with."""
    from .config import load_config

    over = {"tune.max_steps": spec["steps"], "experiment.seed": spec["seed"], "tune.time_budget_minutes": None}
    if spec.get("model") and spec["set"] != "airline":
        over["model.name_or_path"] = spec["model"]
    return load_config(paths.PARAMS / ("sentiment-airline.yaml" if spec["set"] == "airline" else "chat-faq.yaml"), over)


def set_spec(spec: dict, name: str) -> dict:
    """The spec for one data set: its name, and for the classifier its own steps (--cls-steps)."""
    return {**spec, "set": name, **({"steps": spec.get("cls_steps", spec["steps"])} if name == "airline" else {})}


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

    from .inference import token_nlls

    nlls = token_nlls(model, tokenizer, rows, max_length, batch_size=16)
    return float(np.concatenate(nlls).mean())


def lora_config(spec: dict, model, task: str = "CAUSAL_LM", heads: list[str] | None = None):
    """The LoRA adapter every path uses: the same rank, alpha, targets."""
    from peft import LoraConfig, TaskType

    from .adapters import TARGET_MODULES

    return LoraConfig(task_type=getattr(TaskType, task), r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                      target_modules=TARGET_MODULES.get(model.config.model_type, "all-linear"), modules_to_save=heads)


def classifier_rows(spec: dict, batch_size: int) -> tuple[list[dict], list[dict]]:
    """The airline tweets, shuffled with the seed: steps*batch_size to train on, cls_val_examples to score."""
    from . import data

    rows = data.load(pipeline_config(spec)).rows
    random.Random(spec["seed"]).shuffle(rows)
    return rows[:spec["steps"] * batch_size], rows[-spec["cls_val_examples"]:]


def ceiling_bench(spec: dict) -> dict[str, Any]:
    """The machine's matmul ceiling for each data set's model shapes at its packed batch's token
    count (tokens per optimizer step), bf16 and fp32, and the FLOPs per trained token."""
    import torch
    from transformers import AutoConfig

    from . import models

    out = {}
    for name in spec["sets"]:
        s = set_spec(spec, name)
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


def _cuda() -> bool:
    """Whether a CUDA GPU is there (the references then run on it too)."""
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- where the wall time goes

class Phases:
    """Exclusive seconds and calls per named phase, from functions wrapped in place (in a worker process only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
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
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._stack:
                    self._stack[-1][1] += total

        setattr(owner, attr, timed)


def instrument(phases: Phases) -> None:
    """Wrap what every path does outside its optimizer steps: model resolution (GGUF conversion),
    loading, adapters and the bf16 copy (adapters.build_model beyond the load), tokenization, Trainer
    construction, evaluation and sample answers."""
    import datasets
    import transformers

    from . import adapters, models, training
    from .tasks import chat as chat_task

    phases.wrap(models, "resolve", "resolve")
    phases.wrap(models, "load_causal_lm", "load")
    phases.wrap(models, "load_classifier", "load")
    phases.wrap(adapters, "build_model", "adapters+bf16")
    phases.wrap(training, "prepare", "tokenize")
    phases.wrap(datasets.Dataset, "map", "tokenize")
    phases.wrap(transformers.Trainer, "__init__", "trainer setup")
    phases.wrap(transformers.Trainer, "evaluate", "evaluate")
    phases.wrap(chat_task.SampleCallback, "_sample", "samples")


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
    """helpers.training.fit with the bench's shared knobs (no validation during training)."""
    from . import training

    cfg = bench_config(spec)
    train, _ = bench_rows(spec)
    fitted = training.fit(cfg, train, [], out, callbacks=[timer], resume=False)
    return fitted.trainer.model, fitted.tokenizer, train, cfg.model.max_length


def train_pipeline(spec: dict, out: Path, timer):
    """helpers.training.fit exactly as stage 04 calls it, with chat-faq's own config (its cap, batch,
    step-0 validation and sample answers) for the bench's steps: what `make pipeline` runs."""
    from . import training

    cfg = pipeline_config(spec)
    train, val = bench_rows(spec, spec["steps"] * cfg.tune.batch_size)
    fitted = training.fit(cfg, train, val, out, callbacks=[timer], samples=out / "samples.jsonl", resume=False)
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
            "step_seconds": timer.step_seconds, "phases": phases.seconds, "phase_calls": phases.calls,
            "examples": len(train), "max_length": max_length, "tokens": tokens, "loss_tokens": loss_tokens,
            "tokens_per_s": tokens / timer.seconds, "step_tokens_per_s": tokens / timer.step_seconds,
            "loss_tokens_per_s": loss_tokens / timer.seconds, "peak_rss_gib": rss,
            "val_examples": len(val), "val_loss": validation_loss(model, tok, val, set_max_length(spec))}


# ---------------------------------------------------------------- evaluation timing

def eval_bench(spec: dict) -> dict[str, Any]:
    """Batched perplexity and KV-cache generation against the same code one example at a time."""
    from . import models
    from .inference import generate, token_nlls

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
