"""Readers of the user file formats (OpenAI / ShareGPT chats, Alpaca, CSV, JSONL labels) into task rows.

Every reader decodes through `textfile.read_text` and validates each row through `schema`, so a bad
row in any format is set aside with its file, line and reason.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .schema import DataError, Loaded, add_chat, add_labelled
from .textfile import TextFile, read_text

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}
# A CSV field may be this long (Python's default, 128 KB, stops a long document with a bare
# "field larger than field limit"); a quote left open is caught by the strict reader instead.
CSV_FIELD_LIMIT = 2**31 - 1


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
    text = read_text(path).text.lstrip()
    if text.startswith("["):
        try:
            items = json.loads(text)
            return items[0] if items and isinstance(items[0], dict) else None
        except json.JSONDecodeError:
            return None
    for line in text[:200_000].splitlines():
        try:
            obj = json.loads(line)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            continue
    return None


# ---------------------------------------------------------------- line readers

def _json_lines(path: Path, out: Loaded) -> Iterator[tuple[str, Any]]:
    """Yield (source, object) for each line that is valid JSON; the rest become problems."""
    tf = read_text(path)
    out.note(tf.note)
    for n, line in enumerate(tf.lines(), start=1):
        src = f"{path.name}:{n}"
        if not line.strip():
            continue
        if n in tf.bad_lines:
            out.problem(src, "encoding", tf.bad_lines[n], line)
            continue
        try:
            yield src, json.loads(line.rstrip("\r"))
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
            messages, why = _join_parts(obj["messages"])
            if why:
                out.problem(src, "schema", why, obj)
                continue
        elif "conversations" in obj:
            messages = _from_sharegpt(obj["conversations"])
        else:
            out.problem(src, "schema", "no 'messages' field (OpenAI format) or 'conversations' field (ShareGPT)", obj)
            continue
        add_chat(out, src, messages, cfg, topic=str(obj.get("topic") or obj.get("category") or ""))
    return out


def _join_parts(messages: Any) -> tuple[Any, str | None]:
    """OpenAI content given as a list of parts, as one text: text parts joined by newlines. A chat
    with another part (image, audio, file, refusal) comes back with the reason to set it aside."""
    if not isinstance(messages, list):
        return messages, None
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            parts = m["content"]
            other = [p.get("type", "?") if isinstance(p, dict) else type(p).__name__ for p in parts
                     if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))]
            if other:
                return messages, (f"message {i} ({m.get('role')}) has a {other[0]!r} content part: only text is "
                                  f"trained on, and the chat without it may not make sense; remove the part to keep it")
            m = {**m, "content": "\n".join(p["text"] for p in parts)}
        out.append(m)
    return out, None


def _json_list(path: Path, out: Loaded) -> Iterator[tuple[str, Any]]:
    """Yield (source, record) from a file holding one JSON list."""
    tf = read_text(path)
    out.note(tf.note)
    if tf.bad_lines:
        n, reason = next(iter(tf.bad_lines.items()))
        raise DataError(f"{path}:{n}: {reason} (a JSON list is read whole, so one bad line stops it)")
    try:
        items = json.loads(tf.text)
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
    records = _json_list(path, out) if path.suffix == ".json" and read_text(path).text.lstrip()[:1] in ("[", "") \
        else _json_lines(path, out)
    for src, obj in records:
        if not isinstance(obj, dict) or "instruction" not in obj or "output" not in obj:
            out.problem(src, "schema", "an Alpaca record needs 'instruction' and 'output' fields", obj)
            continue
        prompt = str(obj["instruction"]).strip()
        if str(obj.get("input") or "").strip():
            prompt += "\n\n" + str(obj["input"]).strip()
        add_chat(out, src, [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}], cfg)
    return out


def _read_csv(path: Path, cfg: Config, labelled: bool = True) -> Loaded:
    """CSV: prompt/response columns for chat, text/label columns for classification."""
    out = Loaded()
    d = cfg.data
    cols = (d.prompt_column, d.response_column) if cfg.experiment.task == "chat" else (d.text_column, d.label_column)
    tf = read_text(path)
    out.note(tf.note)
    if not tf.text.strip():
        raise DataError(f"{path}: the file is empty")
    records = _csv_records(path, tf, "\t" if path.suffix.lower() == ".tsv" else ",", out)
    header = next((fields for _, _, fields in records if fields), [])
    missing = [c for c in (cols if labelled else cols[:1]) if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {header}. "
                        f"Set data.{'prompt_column/response_column' if cfg.experiment.task == 'chat' else 'text_column/label_column'}")
    for first, last, fields in records:
        if not fields:  # a blank line
            continue
        src = f"{path.name}:{last}"  # the file line where the record ends (quoted fields may span lines)
        if any(n in tf.bad_lines for n in range(first, last + 1)):
            out.problem(src, "encoding", tf.bad_lines[next(n for n in range(first, last + 1) if n in tf.bad_lines)],
                        fields)
            continue
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
            out.problem(src, "csv", f"{len(fields)} fields where the header has {len(header)}: a text holding the "
                                    f"delimiter must be in quotes (\"like, this\")", fields)
            continue
        rec = dict(zip(header, fields))
        if cfg.experiment.task == "chat":
            add_chat(out, src, [{"role": "user", "content": rec[cols[0]]}, {"role": "assistant", "content": rec[cols[1]]}], cfg)
        else:
            add_labelled(out, src, rec[cols[0]], rec.get(cols[1]), rec, labelled)
    return out


def _csv_records(path: Path, tf: TextFile, delimiter: str, out: Loaded) -> Iterator[tuple[int, int, list[str]]]:
    """Yield (first line, last line, fields) per CSV record, the header first ([] for a blank line).

    A quote left open must not swallow the lines after it into one field. The strict reader stops
    where the swallowing field ends badly; a field that ends well by chance (on a later row's quote)
    is caught by holding whole rows (`_rowlike_lines`). Either way the record's first line, where
    the quote opens, is set aside (rule quote, naming the line) and reading restarts on the next
    line, so every following row is still read and accounted for.
    """
    lines = tf.lines()
    start = 0  # index in lines where the current reader began
    width = 0  # fields in the header, once read
    old_limit = csv.field_size_limit(min(sys.maxsize, CSV_FIELD_LIMIT))
    try:
        while start < len(lines):
            reader = csv.reader((line + "\n" for line in lines[start:]), delimiter=delimiter, strict=True)
            done = 0  # reader.line_num after the last complete record
            try:
                for fields in reader:
                    first, last = start + done + 1, start + reader.line_num
                    span = lines[first - 1:last - 1]  # the record's lines but its last
                    rowlike = _rowlike_lines([span[0].replace('"', "", 1)] + span[1:], width, delimiter) \
                        if width and last - first >= 2 else 0
                    if rowlike >= 3:  # the opening line (quote removed) and two more read as whole rows
                        out.problem(f"{path.name}:{first}", "quote", (
                            f"a quote opened at line {first} runs on to line {last}, taking in {rowlike - 1} lines "
                            f"that look like rows of their own; close the quote (a quote inside a quoted field is "
                            f"written twice: \"\"). Reading went on at line {first + 1}"), lines[first - 1])
                        start = first
                        break
                    width = width or len(fields)
                    yield first, last, fields
                    done = reader.line_num
                else:
                    return
            except csv.Error as e:
                first, ran_to = start + done + 1, start + reader.line_num
                if "expected after" in str(e) or "unexpected end of data" in str(e):
                    reason = (f"a quoted field in the record starting at line {first} is not closed where it should be "
                              f"(the reader ran on to line {ran_to}: {e}), so the lines after it would have been "
                              f"swallowed into one field; close the quote there (a quote inside a quoted field is "
                              f"written twice: \"\"). Reading went on at line {first + 1}")
                    out.problem(f"{path.name}:{first}", "quote", reason, lines[first - 1])
                else:
                    out.problem(f"{path.name}:{first}", "csv", f"not readable as CSV ({e})", lines[first - 1])
                start = first  # the line after the record's first line (0-based index == 1-based line + 1 - 1)
    finally:
        csv.field_size_limit(old_limit)


def _rowlike_lines(lines: list[str], width: int, delimiter: str) -> int:
    """How many of these lines read, each on its own, as a complete record of `width` non-empty fields."""
    n = 0
    for line in lines:
        try:
            fields = next(csv.reader([line], delimiter=delimiter, strict=True), [])
        except csv.Error:
            continue
        n += len(fields) == width and all(f.strip() for f in fields)
    return n


def _read_jsonl_labels(path: Path, cfg: Config, labelled: bool = True) -> Loaded:
    """JSONL with a text field and a label field per line (the label optional when not labelled)."""
    out = Loaded()
    t, l = cfg.data.text_column, cfg.data.label_column
    for src, obj in _json_lines(path, out):
        if not isinstance(obj, dict) or t not in obj or (labelled and l not in obj):
            need = f"{t!r} and {l!r} fields" if labelled else f"a {t!r} field"
            out.problem(src, "schema", f"needs {need} (set data.text_column / data.label_column)", obj)
            continue
        add_labelled(out, src, obj[t], obj.get(l), obj, labelled)
    return out

