"""Benchmark: our training and evaluation paths against the usual recipes, on the same work.

    python -m helpers.bench [--steps 30] [--batch-size 8] [--max-length 128] [--model NAME] [--out bench/]
                            [--serving yes|no|only]

Three training paths, each in its own process (so peak memory is its own), on the same data,
model, LoRA configuration, sequence cap, learning rate, seed and number of optimizer steps:
  ours  what `make pipeline` runs (helpers.training.fit with the chat-faq params)
  docs  the transformers/PEFT documentation recipe: Trainer, fp32, padding to the longest in
        the batch, loss on every token (DataCollatorForLanguageModeling)
  trl   TRL's SFTTrainer with its defaults (bf16, gradient checkpointing, loss on every token)
Each reports wall time (model load and tokenization included), tokens/s over the training
loop (timed by the same Trainer callback in every path) for all real tokens and for assistant
(loss-carrying) tokens (the same counts for every path: same examples, same steps), peak resident
memory, and the validation loss after training, measured the same way for all three (mean
assistant-token cross-entropy on held-out chats). Then evaluation: batched perplexity and
batched KV-cache generation against the same code one example at a time. Then serving
(helpers.servebench): the base model behind `transformers serve` under 1, 4 and 16 concurrent
clients beside in-process batched generate (`--serving only` runs just that table). Writes
bench/<timestamp>/results.json and results.md; the last line printed is the speed-up.
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

PATHS = ["ours", "docs", "trl"]


# ---------------------------------------------------------------- shared setup

def bench_config(spec: dict):
    """The chat-faq config with the bench's shared knobs applied (what `ours` trains with)."""
    from .config import load_config

    over = {"tune.max_steps": spec["steps"], "tune.batch_size": spec["batch_size"],
            "tune.learning_rate": spec["lr"], "tune.warmup_ratio": 0.0, "tune.scheduler": "constant",
            "tune.lora.r": spec["r"], "tune.lora.alpha": spec["alpha"], "tune.lora.dropout": 0.0,
            "model.max_length": spec["max_length"], "experiment.seed": spec["seed"],
            "tune.save_steps": 10_000, "tune.logging_steps": 10_000}
    if spec.get("model"):
        over["model.name_or_path"] = spec["model"]
    return load_config(paths.PARAMS / "chat-faq.yaml", over)


def bench_rows(spec: dict) -> tuple[list[dict], list[dict]]:
    """The bundled chat pairs, shuffled with the seed: steps*batch to train on, 64 to validate."""
    from . import data

    rows = data.load(bench_config(spec)).rows
    random.Random(spec["seed"]).shuffle(rows)
    n = spec["steps"] * spec["batch_size"]
    return rows[:n], rows[n:n + spec["val_examples"]]


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


def lora_config(spec: dict, model):
    """The LoRA adapter every path uses: the same rank, alpha, targets."""
    from peft import LoraConfig, TaskType

    from .adapters import TARGET_MODULES

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                      target_modules=TARGET_MODULES.get(model.config.model_type, "all-linear"))


# ---------------------------------------------------------------- the three paths

class LoopTimer(TrainerCallback):
    """Seconds from the Trainer's train begin to its end: the same clock for every path."""

    seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


def train_ours(spec: dict, train: list[dict], out: Path, timer):
    """helpers.training.fit, exactly as the pipeline calls it (no validation during the bench)."""
    from . import training

    fitted = training.fit(bench_config(spec), train, [], out, callbacks=[timer], resume=False)
    return fitted.trainer.model, fitted.tokenizer


def train_docs(spec: dict, train: list[dict], out: Path, timer):
    """The documentation recipe: fp32 Trainer, pad to longest, labels = inputs (every token)."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from . import models

    cfg = bench_config(spec)
    tok = models.load_tokenizer(cfg)
    model = models.load_causal_lm(cfg)
    model = get_peft_model(model, lora_config(spec, model))
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in train]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=spec["max_length"], add_special_tokens=False),
        batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=spec["batch_size"],
                             max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                             seed=spec["seed"], report_to="none", save_strategy="no", logging_steps=10_000,
                             disable_tqdm=True, use_cpu=not _cuda())
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False)).train()
    return model, tok


def train_trl(spec: dict, train: list[dict], out: Path, timer):
    """TRL's SFTTrainer with its defaults, given the shared knobs (steps, batch, lr, cap, LoRA)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from . import models

    cfg = bench_config(spec)
    tok = models.load_tokenizer(cfg)
    model = models.load_causal_lm(cfg)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                     learning_rate=spec["lr"], lr_scheduler_type="constant", max_length=spec["max_length"],
                     seed=spec["seed"], report_to="none", save_strategy="no", logging_steps=10_000,
                     disable_tqdm=True, use_cpu=not _cuda())
    trainer = SFTTrainer(model=model, args=args, processing_class=tok, peft_config=lora_config(spec, model),
                         callbacks=[timer],
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train]))
    trainer.train()
    return trainer.model, tok


TRAINERS = {"ours": train_ours, "docs": train_docs, "trl": train_trl}


def worker(path: str, spec: dict) -> dict[str, Any]:
    """Run one training path in this process and measure it."""
    import torch

    torch.manual_seed(spec["seed"])
    train, val = bench_rows(spec)
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, tok = TRAINERS[path](spec, train, Path(tmp), timer)
        seconds = time.perf_counter() - start
    tokens, loss_tokens = token_counts(tok, train, spec["max_length"])
    model = model.float().eval()  # the yardstick below runs every path's model in fp32
    return {"path": path, "seconds": seconds, "train_seconds": timer.seconds, "tokens": tokens,
            "loss_tokens": loss_tokens, "tokens_per_s": tokens / timer.seconds,
            "loss_tokens_per_s": loss_tokens / timer.seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "val_loss": validation_loss(model, tok, val, spec["max_length"])}


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


# ---------------------------------------------------------------- driver

def run_in_subprocess(mode: str, spec: dict) -> dict[str, Any]:
    """Run `python -m helpers.bench --worker mode` and return its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "helpers.bench", "--worker", mode, "--spec", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {mode!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables, the way the README shows them."""
    from . import servebench

    if "eval" not in results:  # --serving only
        return "\n".join([servebench.markdown(results["serving"]), "", f"Machine: {results['machine']}. "
                                                                          f"Spec: {json.dumps(results['spec'])}"])
    rows = ["| path | wall s | train loop s | tokens/s | loss tokens/s | peak RSS GiB | val loss |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["train"]:
        rows.append(f"| {r['path']} | {r['seconds']:.1f} | {r['train_seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                    f"{r['loss_tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['val_loss']:.4f} |")
    e = results["eval"]
    rows += ["", "| evaluation | perplexity s | generation s | total s |", "| --- | ---: | ---: | ---: |"]
    for name in ("one_at_a_time", "batched"):
        rows.append(f"| {name} | {e[name]['perplexity_s']:.1f} | {e[name]['generation_s']:.1f} | {e[name]['total_s']:.1f} |")
    s = results["summary"] or {"best_reference": "-", "train_speedup": float("nan"), "val_loss_gap_pct": float("nan")}
    rows += ["", f"Training speed-up over the best reference ({s['best_reference']}): {s['train_speedup']:.2f}x; "
                 f"validation loss {s['val_loss_gap_pct']:+.2f}% vs it. Evaluation speed-up: {e['speedup']:.2f}x. "
                 f"Cached base-model load: {results['cached_load']['seconds']:.2f} s "
                 f"({results['cached_load']['first_s']:.2f} s for the first load in a fresh process, model code imports included).",
             f"Machine: {results['machine']}. Spec: {json.dumps(results['spec'])}"]
    if results.get("serving"):
        rows += ["", servebench.markdown(results["serving"])]
    return "\n".join(rows)


def summary(train: list[dict]) -> dict[str, Any]:
    """Speed-up of ours over the fastest reference, and the validation-loss gap to it."""
    ours = next(r for r in train if r["path"] == "ours")
    refs = [r for r in train if r["path"] != "ours"]
    best = max(refs, key=lambda r: r["tokens_per_s"])
    return {"best_reference": best["path"], "train_speedup": ours["tokens_per_s"] / best["tokens_per_s"],
            "val_loss_gap_pct": 100 * (ours["val_loss"] - best["val_loss"]) / best["val_loss"]}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the workers (or, with --worker, be one)."""
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per training path")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128, help="token cap per example")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--model", default=None, help="any model name_or_path (default: the bundled SmolLM2)")
    p.add_argument("--paths", default=",".join(PATHS), help="which training paths to time")
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
        result = {"eval": eval_bench, "load": cached_load_seconds, "serving": serving_bench}.get(
            a.worker, lambda s: worker(a.worker, s))(spec)
        print(json.dumps(result))
        return 0
    spec = {"steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr, "model": a.model,
            "seed": a.seed, "r": 8, "alpha": 16, "val_examples": 64, "gen_examples": 16, "eval_batch_size": 16,
            "max_new_tokens": 32, "serve_prompts": a.serve_prompts}
    out = Path(a.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs, {_gpu()}"
    if a.serving == "only":
        return serving_only(spec, machine, out)
    train = []
    for path in a.paths.split(","):
        print(f"training path {path} ...", flush=True)
        train.append(run_in_subprocess(path, spec))
        print(f"  {train[-1]['seconds']:.1f} s, {train[-1]['tokens_per_s']:.0f} tokens/s, "
              f"val loss {train[-1]['val_loss']:.4f}", flush=True)
    print("evaluation ...", flush=True)
    results = {"spec": spec, "machine": machine, "train": train, "eval": run_in_subprocess("eval", spec),
               "cached_load": run_in_subprocess("load", spec)}
    if a.serving == "yes":
        print("serving ...", flush=True)
        results["serving"] = run_in_subprocess("serving", spec)
    results["summary"] = summary(train) if len(train) > 1 else {}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"written: {out}/results.md")
    s = results["summary"] or {"best_reference": "-", "train_speedup": float("nan")}
    print(f"speed-up over the best reference ({s['best_reference']}): {s['train_speedup']:.2f}x training, "
          f"{results['eval']['speedup']:.2f}x evaluation")
    return 0


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
