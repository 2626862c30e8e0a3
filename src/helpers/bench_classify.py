"""The classifier paths `make bench` times (ours, the pipeline's, the documentation recipe for
sequence classification), each in its own process, on the airline tweets."""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from .bench_paths import LoopTimer, Phases, _cuda, classifier_rows, instrument, lora_config, pipeline_config


# ---------------------------------------------------------------- the classifier paths

def classify_ours(spec: dict, out: Path, timer, validate: bool = False):
    """helpers.training.fit with sentiment-airline's own config; `validate`: with its validation pass
    at step 0 (as stage 04 runs it), else none."""
    from . import training

    cfg = pipeline_config(spec)
    train, val = classifier_rows(spec, cfg.tune.batch_size)
    fitted = training.fit(cfg, train, val if validate else [], out, callbacks=[timer], resume=False)
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

    from . import metrics
    from .inference import predict_proba

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
            "step_seconds": timer.step_seconds, "phases": phases.seconds, "phase_calls": phases.calls,
            "examples": len(train), "max_length": cfg.model.max_length, "batch_size": cfg.tune.batch_size, "tokens": tokens,
            "tokens_per_s": tokens / timer.seconds, "step_tokens_per_s": tokens / timer.step_seconds,
            "peak_rss_gib": rss, "val_examples": len(val),
            "val_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
            "f1_macro": metrics.classification_scores(y, probs)["macro_f1"]}  # stage 05's function
