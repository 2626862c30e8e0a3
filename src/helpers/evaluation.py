"""Stage 05: score the tuned model on the test split against a reference point.

What both tasks share lives here (the test rows, the rows tuned on, the tuned model, writing
per-example results, interval text); what each task measures lives in its own module with the
same entry names (`headline`, ...): helpers.evaluation_chat (perplexity base vs tuned, answers,
robustness) and helpers.evaluation_classification (tuned vs a TF-IDF baseline). Headline
figures carry seeded bootstrap 95% intervals.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from . import data, models
from .config import Config
from .runs import Run


def test_rows(run: Run, cfg: Config) -> list[dict]:
    """The test split, or a seeded subsample of evaluate.max_examples rows of it."""
    rows = data.read_jsonl(run.data / "test.jsonl")
    n = cfg.evaluate.max_examples
    if n and len(rows) > n:
        keep = sorted(random.Random(cfg.experiment.seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows


def train_rows(run: Run) -> tuple[list[dict], str]:
    """The rows the model was tuned on (Run.train_file decides which file) and that file's name."""

    path = run.train_file
    return data.read_jsonl(path), path.name


def load_tuned(run: Run, cfg: Config) -> tuple[Any, Any]:
    """The tuned model in model/final and its tokenizer (pad token set), in eval mode (a classifier ensemble:
    helpers.ensemble reads every member)."""
    folder = run.model / "final"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model: run 04-tune-model first (it saves the merged model there)")
    return models.load_saved(folder, cfg)


def write_rows(run: Run, name: str, rows: list[dict]) -> Path:
    """Write per-example results into the run's data folder."""
    return data.write_jsonl(run.data / name, rows)


def ci_text(lo: float, hi: float, digits: int = 2) -> str:
    """An interval as 'lo – hi' for tables."""
    return f"{lo:.{digits}f} – {hi:.{digits}f}"
