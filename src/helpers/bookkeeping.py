"""What cleaning did, in one Ledger: every reject with its reason, changes with examples, the accounting
input = kept + dropped that must reconcile, and the tables 02 shows from them."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pandas as pd

from .schema import DataError, group_key

@dataclass
class Ledger:
    """What cleaning did: every reject with its reason, changed-row counts and examples per rule."""

    originals: dict[str, dict]  # id -> the row as loaded: rejects carry it untouched
    rejects: list[dict] = field(default_factory=list)
    changed: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    added: Counter = field(default_factory=Counter)  # rows added (oversampling), per rule
    # Chats kept as windows (clean.window_chats): input id -> number of windows. Such a chat counts
    # once as kept; its windows (rows `<id>#w1`... with `window_of`) are what the splits hold.
    windowed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: list[dict]) -> "Ledger":
        """A ledger for these input rows (ids must be unique: rows are tracked by id)."""
        ids = Counter(r["id"] for r in rows)
        dup = [i for i, n in ids.items() if n > 1]
        if dup:
            raise DataError(f"row ids must be unique; repeated: {dup[:5]} "
                            f"(re-run 01, which assigns ids from file:line)")
        return cls(originals={r["id"]: r for r in rows})

    @property
    def input(self) -> int:
        """Rows that came in."""
        return len(self.originals)

    def reject(self, row: dict, rule: str, reason: str) -> None:
        """Drop a row: record the rule, the reason and the row as it was loaded."""
        raw = json.dumps(self.originals.get(row["id"], row), ensure_ascii=False)
        self.rejects.append({"source": row["source"], "rule": rule, "reason": reason, "raw": raw})

    def change(self, rule: str, source: str, before: str, after: str, keep: int = 5) -> None:
        """Count a row a rule changed, keeping the first few before/after pairs to show."""
        self.changed[rule] += 1
        if len(self.examples[rule]) < keep:
            b, a = diff_window(before, after)
            self.examples[rule].append({"rule": rule, "source": source, "before": b, "after": a})

    def dropped(self) -> Counter:
        """Rows dropped per rule."""
        return Counter(r["rule"] for r in self.rejects)


def diff_window(before: str, after: str, context: int = 25) -> tuple[str, str]:
    """The part of two texts that differs, with some context, invisible characters escaped."""
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    end = 0  # length of the common suffix, not overlapping the common prefix
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    lo = max(0, start - context)

    def cut(text: str) -> str:
        hi = min(len(text), len(text) - end + context)
        return ("…" if lo else "") + visible(text[lo:hi]) + ("…" if hi < len(text) else "")

    return cut(before), cut(after)


def visible(text: str) -> str:
    """text with newlines, tabs, odd spaces and control characters shown as escapes."""
    return "".join(c.encode("unicode_escape").decode() if c != " " and (c.isspace() or not c.isprintable()) else c
                   for c in text)


# ---------------------------------------------------------------- accounting

def kept_ids(ledger: Ledger, splits: dict[str, list[dict]]) -> set[str]:
    """Ids of the input rows the splits hold: a window counts as its chat (`window_of`); copies not at all."""
    return {r.get("window_of", r["id"]) for rows in splits.values() for r in rows} & set(ledger.originals)


def accounting(ledger: Ledger, splits: dict[str, list[dict]]) -> pd.DataFrame:
    """Input = kept + dropped per rule, as a table; raises if the numbers do not reconcile. A chat kept as
    k windows is one kept row; the k - 1 extra rows are shown as `added: windows`."""
    kept = kept_ids(ledger, splits)
    dropped = ledger.dropped()
    # Raised, not `assert`ed: python -O must not skip the check that no row went missing.
    if len(kept) + sum(dropped.values()) != ledger.input:
        raise AssertionError(f"accounting: {ledger.input} input rows != {len(kept)} kept + "
                             f"{sum(dropped.values())} dropped; a step lost rows without a reject")
    both = kept & {json.loads(r["raw"]).get("id") for r in ledger.rejects}
    if both:
        raise AssertionError(f"accounting: rows both kept and rejected: {sorted(both)[:5]}")
    lines = [{"step": "input", "rows": ledger.input, "changed": None}]
    for rule, n in ledger.changed.items():
        lines.append({"step": f"changed by {rule}", "rows": None, "changed": n})
    for rule, n in dropped.items():
        lines.append({"step": f"dropped: {rule}", "rows": -n, "changed": None})
    lines.append({"step": "kept", "rows": len(kept), "changed": None})
    if ledger.windowed:  # "changed": chats split; "rows": the windows beyond one per chat
        lines.append({"step": f"added: windows (long chats kept as {sum(ledger.windowed.values())} windows)",
                      "rows": sum(ledger.windowed.values()) - len(ledger.windowed), "changed": len(ledger.windowed)})
    for rule, n in ledger.added.items():
        lines.append({"step": f"added: {rule} (train copies)", "rows": n, "changed": None})
    return pd.DataFrame(lines)


def examples_table(ledger: Ledger) -> pd.DataFrame:
    """Before/after examples of each text rule that changed something."""
    return pd.DataFrame([e for ex in ledger.examples.values() for e in ex],
                        columns=["rule", "source", "before", "after"])


def rejects_table(ledger: Ledger, rules: list[str] | None = None, per_rule: int = 5) -> pd.DataFrame:
    """The first few rejects of each rule (all rules, or the given ones): where and why."""
    df = pd.DataFrame(ledger.rejects, columns=["source", "rule", "reason"])
    if rules is not None:
        df = df[df["rule"].isin(rules)]
    return df.groupby("rule", sort=False).head(per_rule).reset_index(drop=True)


def split_key(splits: dict[str, list[dict]]) -> str:
    """The per-group key of split tables and metrics: label or topic (chats without topics: "(none)")."""
    return group_key([r for rows in splits.values() for r in rows]) or "topic"


def split_summary(splits: dict[str, list[dict]]) -> pd.DataFrame:
    """Rows per split and per label (classification) or topic (chat)."""
    key = split_key(splits)
    table = pd.DataFrame({name: Counter(r.get(key) or "(none)" for r in rows) for name, rows in splits.items()})
    table = table.fillna(0).astype(int).sort_index()
    table.loc["total"] = table.sum()
    return table.rename_axis(key).reset_index()

