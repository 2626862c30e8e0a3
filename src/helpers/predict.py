"""Label new texts with a run's tuned classifier.

    python -m helpers.predict --run reports/<run> --input new.csv [--output out.csv]   (make predict)

The input is read by stage 01's own reader (helpers.data, the run's text and label column
names, format from the extension), with the label column optional. Each readable row gets the
predicted label, its confidence and every class probability (stage 05's predict_proba; with
tune.ensemble, the members' average, as 05 scored it); the rows that could not be read go to
`<output>.problems.jsonl`, each with its line and reason.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from . import data, ensemble, evaluation_classification, inference, readers, schema
from .config import ConfigError
from .runs import Run


class PredictError(ValueError):
    """A predict call that cannot run as given; the message says what and how to fix."""


def output_paths(run: Run, input_path: Path, output: Path | None = None) -> tuple[Path, Path]:
    """Where the predictions and the unreadable rows go: beside the run, named after the input."""
    if output is None:
        suffix = ".csv" if input_path.suffix.lower() in (".csv", ".tsv") else ".jsonl"
        output = run.dir / f"predictions-{input_path.stem}{suffix}"
    return output, output.with_name(f"{output.name.rsplit('.', 1)[0]}.problems.jsonl")


def probabilities(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """inference.predict_proba over the texts in batches, with a progress bar, (N, C)."""
    from tqdm.auto import tqdm

    parts = [inference.predict_proba(model, tokenizer, texts[i:i + batch_size], max_length, batch_size)
             for i in tqdm(range(0, len(texts), batch_size), desc="labelling", unit="batch")]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.num_labels))


def write_csv(path: Path, rows: list[dict], labels: list[str]) -> None:
    """Predictions as CSV: one p(<label>) column per class after the predicted label and confidence."""
    cols = [c for c in ("id", "text", "label", "predicted", "confidence") if not rows or c in rows[0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"p({l})" for l in labels])
        for r in rows:
            w.writerow([r[c] for c in cols] + [r["probs"][l] for l in labels])


def predict_file(run: Run, input_path: Path, output: Path | None = None,
                 batch_size: int | None = None) -> tuple[Path, Path, int, int]:
    """Label a CSV or JSONL of texts; returns (predictions, problems, rows labelled, rows set aside)."""
    cfg = run.config()
    if cfg.experiment.task != "classification":
        raise PredictError(f"{run.dir.name} is a {cfg.experiment.task} run: make predict labels texts with a "
                           f"classifier; talk to a chat model with make chat or make serve")
    if not input_path.is_file():
        raise PredictError(f"INPUT={input_path}: no such file; give a CSV or JSONL with a "
                           f"{cfg.data.text_column!r} column")
    reading = cfg.model_copy(deep=True)
    reading.data.format = "auto"  # the new file's own type, whatever the training data was
    loaded = readers.load_file(input_path, reading, labelled=False)
    out, problems = output_paths(run, input_path, output)
    texts = [r["text"] for r in loaded.rows]
    # model/final, or with tune.ensemble every member, their probabilities averaged: the model 05 scored
    tuned = ensemble.members_proba(run, cfg, texts, batch_size or cfg.evaluate.batch_size, probabilities)
    labels = tuned.labels
    rows = evaluation_classification.prediction_rows(loaded.rows, {"tuned": tuned.average}, labels)
    if not any(r["label"] for r in rows):  # new, unlabelled texts: no empty label column
        for r in rows:
            del r["label"]
    if out.suffix.lower() == ".csv":
        write_csv(out, rows, labels)
    else:
        data.write_jsonl(out, rows)
    data.write_jsonl(problems, loaded.problems)
    return out, problems, len(rows), len(loaded.problems)


def main(argv: list[str] | None = None) -> int:
    """Command line: label one file; exit 1 when nothing could be labelled."""
    ap = argparse.ArgumentParser(prog="python -m helpers.predict", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a classification run folder, reports/<run>")
    ap.add_argument("--input", required=True, help="CSV or JSONL of texts (the label column is optional)")
    ap.add_argument("--output", default=None, help="default: <run>/predictions-<input name>.csv or .jsonl")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's evaluate.batch_size")
    a = ap.parse_args(argv)
    run = Run(Path(a.run))
    if not run.config_file.is_file():
        print(f"RUN={a.run} is not a run folder (no config.yaml); give RUN=reports/<run>", file=sys.stderr)
        return 2
    try:
        out, problems, n, bad = predict_file(run, Path(a.input), Path(a.output) if a.output else None, a.batch_size)
    except (PredictError, schema.DataError, FileNotFoundError, ConfigError) as e:
        print(f"predict failed: {e}", file=sys.stderr)
        return 1
    print(f"{n} rows labelled: {out}")
    print(f"{bad} rows could not be read: {problems}" + (" (each with its line and reason)" if bad else ""))
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
