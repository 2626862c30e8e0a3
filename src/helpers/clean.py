"""Clean loaded rows, drop what cannot be trained on (with the reason), split train/validation/test.

The steps, in the one order `STEPS` names (02-clean-data calls them cell by cell, and
tests/test_clean.py checks that it does), all recorded in one `bookkeeping.Ledger`: normalize
(`textrules`, every text field) -> filter (too short, noisy, too long, length outliers) -> exact
duplicates -> near-duplicates -> similarity groups -> seeded split -> long chats into windows ->
class balance on train -> accounting. Every dropped row is a reject {"source", "rule", "reason",
"raw"} where raw is the row as loaded (the input is never modified), and the accounting
input = kept + dropped per rule is checked (a chat kept as k windows counts once as kept; its
windows are rows `<id>#w1`...`#wk` of the same split). A row's texts are read and written through
`schema.row_texts` / `schema.with_texts`; what differs by task comes from cfg.experiment.task.
"""
from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict

import numpy as np

from .bookkeeping import Ledger, accounting, kept_ids, split_key  # noqa: F401  (accounting: the last of STEPS)
from . import metrics as scores
from .config import Config
from .measures import (analysis_text, chat_windows, dedup_key, iqr_fences, longest_exchange, similar_pairs,
                       symbol_share, token_lengths)
from .schema import DataError, row_texts, with_texts
from .textrules import text_rules

# The step functions, in their one order (02-clean-data calls exactly these, and
# tests/test_clean.py fails if it skips, adds or reorders one). Each decides from cfg whether it acts.
STEPS = ("normalize", "filter_rows", "dedup_exact", "dedup_near", "similarity_groups", "split_rows",
         "window_chats", "balance", "accounting")


def normalize(rows: list[dict], cfg: Config, ledger: Ledger) -> list[dict]:
    """Apply the text rules to every text field (chat turns, classification text); new rows out."""
    rules = text_rules(cfg)
    out = []
    for row in rows:
        texts = [t for _, t in row_texts(row)]
        for name, fn in rules:
            before, texts = texts, [fn(t) for t in texts]
            if texts != before:
                i = next(k for k, (b, a) in enumerate(zip(before, texts)) if a != b)
                ledger.change(name, row["source"], before[i], texts[i])
        out.append(with_texts(row, texts))  # a copy: the loaded rows stay as they were
    return out


# ---------------------------------------------------------------- row filters

def max_tokens(cfg: Config) -> tuple[int | None, str]:
    """The token limit rows are dropped above (None: no limit) and the setting it comes from."""
    # Chat: a cut example loses its answer's end (and end-of-turn token), so the model never
    # learns to stop. Classification keeps long texts unless asked: the classifier reads the
    # first max_length tokens, which in short texts carry the label.
    if cfg.clean.max_tokens is not None:
        return cfg.clean.max_tokens, "clean.max_tokens"
    if cfg.experiment.task == "chat":
        return resolved_max_length(cfg), "model.max_length, as clean.max_tokens is unset"
    return None, "no limit for classification while clean.max_tokens is unset"


def resolved_max_length(cfg: Config) -> int:
    """model.max_length as a number: stage 01 writes it into the run's config.yaml when it is auto."""
    if cfg.model.max_length == "auto":
        raise DataError("model.max_length is still 'auto': stage 01 (01-explore-data) measures the data and writes "
                        "the number into the run's config.yaml; run it first, or set model.max_length to a number")
    return cfg.model.max_length


def windows_long_chats(cfg: Config) -> bool:
    """Whether chats longer than model.max_length are kept as windows (chat, clean.max_tokens unset)."""
    # An explicit clean.max_tokens keeps its meaning: rows above it are dropped.
    return cfg.experiment.task == "chat" and cfg.clean.max_tokens is None


def filter_rows(rows: list[dict], cfg: Config, tokenizer, ledger: Ledger) -> list[dict]:
    """Drop rows too short, too noisy, too long for the model (a chat: only when a single exchange does
    not fit; longer chats become windows in window_chats), or (if asked) length outliers."""
    c, chats = cfg.clean, cfg.experiment.task == "chat"
    kept = []
    for row in rows:
        shortest = min((text for _, text in row_texts(row)), key=len)
        if len(shortest) < c.min_chars:
            what = "a turn" if chats else "the text"
            ledger.reject(row, "too_short", f"{what} has {len(shortest)} characters after cleaning "
                                            f"(clean.min_chars: {c.min_chars})")
        elif c.max_symbol_share is not None and symbol_share(analysis_text(row)) > c.max_symbol_share:
            ledger.reject(row, "noisy", f"{symbol_share(analysis_text(row)):.0%} of its characters are not letters "
                                        f"(clean.max_symbol_share: {c.max_symbol_share})")
        else:
            kept.append(row)
    limit, setting = max_tokens(cfg)
    if limit is None and c.outlier_iqr_k is None:
        return kept
    lengths = token_lengths(kept, tokenizer, cfg.experiment.task)["tokens"].tolist()
    lo, hi = iqr_fences(lengths, c.outlier_iqr_k) if c.outlier_iqr_k is not None else (-np.inf, np.inf)
    out = []
    windows = windows_long_chats(cfg)
    for row, n in zip(kept, lengths):
        if limit is not None and n > limit and windows:  # kept as windows (window_chats) if one exchange fits
            one = longest_exchange(tokenizer, row["messages"])
            if one > limit:
                ledger.reject(row, "too_long", f"too long even as windows: the chat has {n} tokens and its longest "
                                               f"exchange (system prompt + user turn + answer; shorten it or raise "
                                               f"model.max_length) {one} tokens > {limit} ({setting})")
            else:
                out.append(row)
        elif limit is not None and n > limit:
            what = "too long, would be truncated" if chats else "too long"
            ledger.reject(row, "too_long", f"{what}: {n} tokens > {limit} ({setting})")
        elif not lo <= n <= hi:
            ledger.reject(row, "length_outlier", f"{n} tokens is outside the IQR fences [{lo:.0f}, {hi:.0f}] "
                                                 f"(clean.outlier_iqr_k: {c.outlier_iqr_k})")
        else:
            out.append(row)
    return out


# ---------------------------------------------------------------- duplicates

def dedup_exact(rows: list[dict], cfg: Config, ledger: Ledger) -> list[dict]:
    """Keep the first of each set of identical rows; drop all copies of a text with clashing labels."""
    if not cfg.clean.dedup_exact:
        return rows
    by_key: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_key[dedup_key(row)].append(row)
    kept = []
    for row in rows:
        same = by_key[dedup_key(row)]
        labels = sorted({r["label"] for r in same}) if cfg.experiment.task == "classification" else []
        if len(labels) > 1:  # a model cannot learn both: a person must decide
            others = ", ".join(r["source"] for r in same if r is not row)
            ledger.reject(row, "label_conflict", f"the same text is labelled {labels} (also at {others}); "
                                                 f"fix the labels in the source file")
        elif same[0] is not row:
            ledger.reject(row, "duplicate", f"exact duplicate of {same[0]['source']}")
        else:
            kept.append(row)
    return kept


def dedup_near(rows: list[dict], cfg: Config, ledger: Ledger) -> list[dict]:
    """Drop a row when it is a near-duplicate of an earlier kept row (clean.near_dup_threshold)."""
    if not cfg.clean.dedup_near or len(rows) < 2:
        return rows
    pairs = similar_pairs([analysis_text(r) for r in rows], cfg.clean.near_dup_threshold, cfg.experiment.seed)
    earlier: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, j, sim in pairs:
        earlier[j].append((i, sim))
    dropped: set[int] = set()
    for j in range(len(rows)):
        match = [(i, s) for i, s in earlier[j] if i not in dropped]  # only kept rows count
        if match:
            i, sim = max(match, key=lambda m: m[1])
            dropped.add(j)
            note = f"; labels differ ({rows[i]['label']} vs {rows[j]['label']})" \
                if cfg.experiment.task == "classification" and rows[i]["label"] != rows[j]["label"] else ""
            ledger.reject(rows[j], "near_duplicate", f"near-duplicate of {rows[i]['source']} "
                                                     f"(similarity {sim:.2f} >= {cfg.clean.near_dup_threshold}){note}")
    return [r for k, r in enumerate(rows) if k not in dropped]


def similarity_groups(rows: list[dict], threshold: float | None, seed: int) -> list[int]:
    """A group id per row: rows linked by similarity >= threshold share one (None: every row alone)."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if threshold is not None and len(rows) > 1:
        for i, j, _ in similar_pairs([analysis_text(r) for r in rows], threshold, seed):
            parent[find(j)] = find(i)
    roots = [find(i) for i in range(len(rows))]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


# ---------------------------------------------------------------- split and balance

def split_counts(n: int, cfg: Config, rows: int | None = None) -> dict[str, int]:
    """Groups (rows when no grouping) per split: round(n * share), at least 1 where a share is asked for."""
    s = cfg.data.split
    val = max(1, round(n * s.validation)) if s.validation > 0 else 0
    test = max(1, round(n * s.test)) if s.test > 0 else 0
    if n - val - test < 1:
        rows = n if rows is None else rows
        grouped = (f" in {n} group{'s' if n != 1 else ''} of similar rows (clean.group_threshold: {cfg.clean.group_threshold} keeps "
                   f"each group in one split; a higher value or null makes more, smaller groups)") if rows != n else ""
        raise DataError(f"only {rows} rows are left after cleaning{grouped}: too few for a {s.validation:.0%} validation "
                        f"/ {s.test:.0%} test split (data.split) with a training row left. Add data, lower data.split, "
                        f"or relax the cleaning rules (the rows dropped so far are listed above)")
    return {"train": n - val - test, "validation": val, "test": test}


def split_rows(rows: list[dict], cfg: Config, groups: list[int] | None = None) -> dict[str, list[dict]]:
    """Seeded train/validation/test split of whole groups, stratified by label for classification."""
    from sklearn.model_selection import train_test_split

    groups = groups if groups is not None else list(range(len(rows)))
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    gids = list(members)
    counts = split_counts(len(gids), cfg, len(rows))
    strata = None
    if cfg.experiment.task == "classification":  # a group's label: its most common one
        strata = [Counter(rows[i]["label"] for i in members[g]).most_common(1)[0][0] for g in gids]
    seed = cfg.experiment.seed

    def cut(ids: list[int], n: int, labels: list[str] | None) -> tuple[list[int], list[int], list[str] | None]:
        """Split n ids off (stratified when possible); returns (rest, part, labels of rest)."""
        if n == 0:
            return ids, [], labels
        try:
            rest, part = train_test_split(ids, test_size=n, random_state=seed, stratify=labels)
        except ValueError as e:  # a label too rare to appear in every split
            warnings.warn(f"split not stratified ({e}); the rarest labels may be missing from a split")
            rest, part = train_test_split(ids, test_size=n, random_state=seed)
        pos = {g: k for k, g in enumerate(ids)}
        return rest, part, [labels[pos[g]] for g in rest] if labels else None

    rest, test, rest_labels = cut(gids, counts["test"], strata)
    train, val, _ = cut(rest, counts["validation"], rest_labels)
    if strata is not None:
        _check_train_labels({rows[i]["label"] for g in train for i in members[g]}, rows, cfg)
    if len(rows) < cfg.clean.min_rows:
        raise DataError(f"only {len(rows)} rows are left after cleaning, fewer than clean.min_rows "
                        f"({cfg.clean.min_rows}): splits of {counts['train']} / {counts['validation']} / "
                        f"{counts['test']} rows can neither train nor measure a model. Add data, or relax the "
                        f"cleaning rules (the rows dropped so far are listed above)")
    # Rows keep their input order inside each split: easier to read and to diff between runs.
    return {name: [rows[i] for g in sorted(part) for i in members[g]]
            for name, part in (("train", train), ("validation", val), ("test", test))}


def _check_train_labels(train_labels: set[str], rows: list[dict], cfg: Config) -> None:
    """Stop before a classifier is built for fewer than two labels (a one-label head learns nothing)."""
    if len(train_labels) >= 2:
        return
    counts = Counter(r["label"] for r in rows)
    what = (f"every kept row has the label {next(iter(counts))!r}" if len(counts) == 1 else
            f"the training split holds only {sorted(train_labels)} (kept rows per label: {dict(counts)})")
    raise DataError(f"{what} after cleaning ({len(rows)} rows): a classifier needs at least two labels in its "
                    f"training split. Add rows of the other labels, lower data.split, or relax the cleaning rules "
                    f"(the rows dropped so far are listed above)")


def window_chats(splits: dict[str, list[dict]], cfg: Config, tokenizer, ledger: Ledger) -> dict[str, list[dict]]:
    """Chats longer than model.max_length as windows of whole exchanges (measures.chat_windows), in the
    split of their chat: ids `<id>#w1`..., `window_of` the chat's id; counted in ledger.windowed."""
    if not windows_long_chats(cfg):
        return splits
    limit = resolved_max_length(cfg)
    out = {}
    for name, rows in splits.items():
        lengths = token_lengths(rows, tokenizer, "chat")["tokens"].tolist()
        part = []
        for row, n in zip(rows, lengths):
            if n <= limit:
                part.append(row)
                continue
            wins = chat_windows(tokenizer, row["messages"], limit)
            if not wins:  # filter_rows let it through, so one exchange fits: a bug if reached
                raise AssertionError(f"{row['source']}: no window of one exchange fits in {limit} tokens")
            ledger.windowed[row["id"]] = len(wins)
            part += [{**row, "id": f"{row['id']}#w{k}", "source": f"{row['source']}#w{k}", "messages": w,
                      "window_of": row["id"]} for k, w in enumerate(wins, 1)]
        out[name] = part
    return out


def balance(train: list[dict], cfg: Config, ledger: Ledger) -> list[dict]:
    """Over- or undersample the training rows to equal label counts (classification, seeded)."""
    how = cfg.clean.balance
    if how == "none" or cfg.experiment.task != "classification":
        return train
    rng = random.Random(cfg.experiment.seed)
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        by_label[r["label"]].append(r)
    target = (max if how == "oversample" else min)(len(v) for v in by_label.values())
    out = []
    for label, rows in sorted(by_label.items()):
        if how == "undersample":
            keep = set(id(r) for r in rng.sample(rows, target))
            for r in rows:
                if id(r) not in keep:
                    ledger.reject(r, "undersample", f"label {label!r} undersampled to {target} training rows "
                                                    f"(clean.balance: undersample)")
            out += [r for r in rows if id(r) in keep]
        else:
            extra = [dict(r, id=f"{r['id']}#copy{k}") for k, r in enumerate(rng.choices(rows, k=target - len(rows)))]
            ledger.added["oversample"] += len(extra)
            out += rows + extra
    return out


def class_weights(train: list[dict]) -> dict[str, float]:
    """'Balanced' class weights n / (k * n_label) of the training labels (what training uses with tune.class_weights)."""
    return scores.balanced_class_weights([r["label"] for r in train])


# ---------------------------------------------------------------- what 02 records

def metrics(ledger: Ledger, splits: dict[str, list[dict]]) -> dict:
    """The numbers 02 records under metrics["clean"]."""
    key = split_key(splits)
    out = {
        "input": ledger.input,
        "kept": len(kept_ids(ledger, splits)),
        "dropped": dict(ledger.dropped()),
        "windowed": {"chats": len(ledger.windowed), "windows": sum(ledger.windowed.values())},
        "changed": dict(ledger.changed),
        "added": dict(ledger.added),
        "splits": {name: len(rows) for name, rows in splits.items()},
        f"{key}s": {name: dict(Counter(r.get(key) or "" for r in rows)) for name, rows in splits.items()},
    }
    if key == "label":
        out["class_weights"] = class_weights(splits["train"])
    return out
