"""Row schemas per task, the container loading fills, row validation, and the one accessor for a row's texts.

chat rows:           {"id", "messages": [{"role", "content"}, ...], "topic", "source"}
classification rows: {"id", "text", "label", "source"}
`source` is "file:line" (or the bundled corpus and its place), so every row can be traced.
A problem is {"source", "rule", "reason", "raw"}: the row is set aside, never silently lost.
"""
from __future__ import annotations

import difflib
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .config import Config

ROLES = ("system", "user", "assistant")
TEXT = "text"  # the role row_texts gives a classification row's one text
INPUT_ROLES = ("user", TEXT)  # texts a model reads as its input: what augmentation may vary
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


# ---------------------------------------------------------------- a row's texts, whatever the task

def row_texts(row: dict) -> list[tuple[str, str]]:
    """(role, text) of each text field of a row: a chat's turns in order, or (TEXT, text) for a labelled text."""
    # A row's shape is looked at in this module only (here, with_texts, group_key): clean, explore and
    # augment read and write texts through row_texts / with_texts, and take the task from cfg.experiment.task.
    if "messages" in row:
        return [(m["role"], m["content"]) for m in row["messages"]]
    return [(TEXT, row["text"])]


def with_texts(row: dict, texts: list[str]) -> dict:
    """A copy of row with its text fields replaced by texts (in row_texts order); other fields shared."""
    if "messages" in row:
        if len(texts) != len(row["messages"]):
            raise ValueError(f"{row.get('source')}: {len(texts)} texts for {len(row['messages'])} turns")
        return {**row, "messages": [{**m, "content": t} for m, t in zip(row["messages"], texts)]}
    (text,) = texts
    return {**row, "text": text}


def with_text(row: dict, i: int, text: str) -> dict:
    """A copy of row with its i-th text field (row_texts order) replaced."""
    texts = [t for _, t in row_texts(row)]
    texts[i] = text
    return with_texts(row, texts)


def group_key(rows: list[dict]) -> str | None:
    """What rows are grouped by in per-group views: label, else topic (if chats have topics)."""
    if rows and "label" in rows[0]:
        return "label"
    return "topic" if any(r.get("topic") for r in rows) else None


def labels_of(rows: list[dict]) -> list[str]:
    """The sorted label set of classification rows."""
    return sorted({r["label"] for r in rows})


# ---------------------------------------------------------------- row checks

def add_chat(out: Loaded, src: str, messages: Any, cfg: Config, topic: str = "") -> None:
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


def add_labelled(out: Loaded, src: str, text: Any, label: Any, raw: Any, labelled: bool = True) -> None:
    """Validate one labelled text and keep it, or set it aside with the reason."""
    text = "" if text is None else str(text)
    label = "" if label is None else str(label).strip()
    if not text.strip():
        out.problem(src, "schema", "empty text", raw)
    elif labelled and not label:
        out.problem(src, "schema", "missing label", raw)
    else:
        out.rows.append({"id": src, "text": text, "label": label, "source": src})


def check_labels(out: Loaded, allowed: list[str]) -> None:
    """Set aside rows whose label is not allowed, suggesting the closest allowed label."""
    kept = []
    for row in out.rows:
        if row["label"] in allowed:
            kept.append(row)
            continue
        close = difflib.get_close_matches(row["label"], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.problem(row["source"], "label", f"unknown label {row['label']!r}{hint}; allowed: {allowed}", row)
    out.rows = kept


def check_label_typos(out: Loaded) -> None:
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

