"""Clean loaded rows, drop what cannot be trained on (with the reason), split train/validation/test.

The steps, in the one order `STEPS` names (`clean_all` and 02-clean-data both follow it, and
tests/test_clean.py checks that both do), all recorded in one `Ledger`: normalize (text rules,
every text field) -> filter (too short, noisy, too long, length outliers) -> exact duplicates
-> near-duplicates -> similarity groups -> seeded split -> class balance on train -> accounting.
Every dropped row is a reject {"source", "rule", "reason", "raw"} where raw is the row as
loaded (the input is never modified), and the accounting input = kept + dropped per rule is
checked.
"""
from __future__ import annotations

import html
import json
import random
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from . import chat
from .config import Config, ConfigError
from .data import DataError

# Placeholders PII is replaced with; they look like tags, so the tag rule must spare them.
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>", "ip": "<IP>", "user": "<USER>"}
PLACEHOLDER_RE = re.compile(r"<(?:EMAIL|PHONE|CARD|IP|USER)>")

# Only tag-shaped text (<b>, </p>, <a href=...>, <br/>, comments) is a tag, so "a < b" and
# "<3" survive. A regex rather than html.parser: the parser silently swallows an unclosed
# "<..." at the end of a text, and we want no silent loss.
HTML_TAG_RE = re.compile(r"<!--.*?-->|</?(?!(?:EMAIL|PHONE|CARD|IP|USER)>)[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>", re.S)
HTML_ENTITY_RE = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]{2,8});")
URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.I)
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Card shapes (13-19 digits, or 4-4-4-x / 4-6-5 groups), kept only if the Luhn checksum
# passes, which tells card numbers from order and ticket numbers.
CARD_RE = re.compile(r"(?<![\d-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5})(?![\d-])")
IP_RE = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
# North-American shapes (555-123-4567, (555) 123-4567, 1-800-433-7300, 5551234567) and
# international ones written with "+" (+44 20 7946 0958). Not after "#" or ".", not before
# "%": those are claim / reference numbers and decimals, which the airline tweets hold many of.
PHONE_RE = re.compile(r"(?<![\w#.+-])(?:(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}"
                      r"|\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,4}\d)(?![\w%])")
USER_RE = re.compile(r"(?<![\w@])@\w{1,30}")
WS_RE = re.compile(r"(?<=\S)[^\S\n]+")  # runs of spaces/tabs/nbsp after a word: indentation is kept
# Markdown code (fenced blocks, `inline`): tags, entities and spacing there are the code itself
# ("<int:index>", "<MyComponent />", Python indentation), so those rules skip it.
CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)
# C0/C1 control characters except tab and newline: invisible, never meant (the airline tweets
# hold "\x99\x85\x8d" where an emoji was lost in their latin-1 export).
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# scikit-learn's English stop words minus negations: "not good" must not become "good".
NEGATIONS = {"no", "not", "nor", "never", "none", "nothing", "nobody", "neither", "nowhere", "cannot"}


def stop_words() -> frozenset[str]:
    """English stop words for removal and counting, negations kept."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS - NEGATIONS)


# ---------------------------------------------------------------- the ledger

@dataclass
class Ledger:
    """What cleaning did: every reject with its reason, changed-row counts and examples per rule."""

    originals: dict[str, dict]  # id -> the row as loaded: rejects carry it untouched
    rejects: list[dict] = field(default_factory=list)
    changed: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    added: Counter = field(default_factory=Counter)  # rows added (oversampling), per rule

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


# ---------------------------------------------------------------- text rules

def fix_mojibake(text: str) -> str:
    """Repair UTF-8 text that was decoded with a single-byte codec (cafÃ© -> café), and nothing else."""
    import ftfy

    fixed, plan = ftfy.fix_encoding_and_explain(text)
    # Accept ftfy's repair only when it ends by decoding UTF-8: that is mojibake undone. A plan
    # that merely re-reads stray bytes as windows-1252 is a guess (the airline tweets' lost
    # emoji "\x99\x85" would become "™…"); control_chars removes those bytes instead.
    return fixed if any(op == "decode" and "utf-8" in codec for op, codec in plan or []) else text


def outside_code(fn: Callable[[str], str]) -> Callable[[str], str]:
    """fn applied to the text between Markdown code spans and blocks, the code left as it is."""
    def apply(text: str) -> str:
        out, last = [], 0
        for m in CODE_RE.finditer(text):
            out += [fn(text[last:m.start()]), m.group()]
            last = m.end()
        return "".join(out + [fn(text[last:])])
    return apply


def remove_control_chars(text: str) -> str:
    """Drop invisible control characters (tab and newline stay)."""
    return CONTROL_RE.sub("", text)


def strip_html_tags(text: str) -> str:
    """Replace tags with a space (so words either side stay apart); keep PII placeholders."""
    # Until nothing changes: removing one tag must not join the pieces of another ("<scr<b>ipt>").
    while True:
        stripped = HTML_TAG_RE.sub(" ", text)
        if stripped == text:
            return text
        text = stripped


def scrub_pii(text: str, kinds: list[str]) -> str:
    """Replace emails, card numbers, IPs, phone numbers and @handles with placeholders."""
    if "email" in kinds:  # first: an email holds an @handle-looking part
        text = EMAIL_RE.sub(PLACEHOLDERS["email"], text)
    if "card" in kinds:  # before phones: a card number contains phone-shaped digit runs
        text = CARD_RE.sub(lambda m: PLACEHOLDERS["card"] if luhn_ok(m.group()) else m.group(), text)
    if "ip" in kinds:
        text = IP_RE.sub(PLACEHOLDERS["ip"], text)
    if "phone" in kinds:
        text = PHONE_RE.sub(PLACEHOLDERS["phone"], text)
    if "user" in kinds:
        text = USER_RE.sub(PLACEHOLDERS["user"], text)
    return text


def luhn_ok(number: str) -> bool:
    """True if the digits pass the Luhn checksum every payment card number carries."""
    # Own code: ten lines, and no installed library exposes it.
    digits = [int(c) for c in number if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def apply_terminology(text: str, terms: dict[str, str]) -> str:
    """Replace whole-word terms (case-insensitive) by their preferred spelling."""
    lookup = {k.lower(): v for k, v in terms.items()}
    # Longest first, so "e-mail address" wins over "e-mail".
    terms = "|".join(re.escape(k) for k in sorted(lookup, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{terms})(?!\w)", re.I)
    return pattern.sub(lambda m: lookup[m.group().lower()], text)


def remove_stopwords(text: str) -> str:
    """Drop English stop words (negations kept), leaving the other words in order."""
    stops = stop_words()
    return " ".join(w for w in text.split() if w.lower().strip(".,!?;:\"'()") not in stops)


def collapse_whitespace(text: str) -> str:
    """One space between words, at most one blank line, no trailing spaces; code and indentation kept."""
    def squeeze(part: str) -> str:
        lines = [WS_RE.sub(" ", line).rstrip() if line.strip() else "" for line in part.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))

    return outside_code(squeeze)(text).strip()


def text_rules(cfg: Config) -> list[tuple[str, Callable[[str], str]]]:
    """The enabled text rules, in the order they run (the order matters; see comments)."""
    c, task = cfg.clean, cfg.experiment.task
    if task == "chat" and (c.lowercase or c.remove_stopwords):
        raise ConfigError("clean.lowercase / clean.remove_stopwords are for classification only: a chat model "
                          "would learn to answer in lowercase without stop words. Set them to false.")
    bad = set(c.pii) - set(PLACEHOLDERS)
    if bad:
        raise ConfigError(f"clean.pii: unknown {sorted(bad)}; use some of {list(PLACEHOLDERS)}")
    rules: list[tuple[str, Callable[[str], str], bool]] = [
        ("mojibake", fix_mojibake, c.fix_mojibake),  # first: later rules need the real characters
        ("control_chars", remove_control_chars, c.remove_control_chars),  # after: mojibake may hold C1 bytes
        # Entities before tags: "&lt;script&gt;" decodes to a tag, which the tag rule then removes
        # (the other order would hand later stages a real <script>). Decoded once: "&amp;lt;b&amp;gt;"
        # becomes the text "&lt;b&gt;", as a browser shows it, and no tag.
        ("html_entities", outside_code(html.unescape), c.unescape_html),
        ("html_tags", outside_code(strip_html_tags), c.strip_html_tags),
        ("unicode", lambda t: unicodedata.normalize("NFKC", t), c.normalize_unicode),
        ("pii", lambda t: scrub_pii(t, c.pii), bool(c.pii)),  # after tags: placeholders look like tags
        ("terminology", lambda t: apply_terminology(t, c.terminology), bool(c.terminology)),
        ("lowercase", str.lower, c.lowercase),
        ("stopwords", remove_stopwords, c.remove_stopwords),
        ("whitespace", collapse_whitespace, c.collapse_whitespace),  # last: earlier rules leave spaces
    ]
    return [(name, fn) for name, fn, on in rules if on]


def normalize(rows: list[dict], cfg: Config, ledger: Ledger) -> list[dict]:
    """Apply the text rules to every text field (chat turns, classification text); new rows out."""
    rules = text_rules(cfg)
    out = []
    for row in rows:
        row = json.loads(json.dumps(row))  # a copy: the loaded rows stay as they were
        fields = row["messages"] if "messages" in row else [row]
        key = "content" if "messages" in row else "text"
        for name, fn in rules:
            before = [f[key] for f in fields]
            for f in fields:
                f[key] = fn(f[key])
            after = [f[key] for f in fields]
            if after != before:
                i = next(k for k, (b, a) in enumerate(zip(before, after)) if a != b)
                ledger.change(name, row["source"], before[i], after[i])
        out.append(row)
    return out


# ---------------------------------------------------------------- row filters

def analysis_text(row: dict) -> str:
    """The words a row is about: its text, or a chat's user and assistant turns (no system prompt,
    which repeats in every chat and would make them all look alike)."""
    if "text" in row:
        return row["text"]
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


def symbol_share(text: str) -> float:
    """Share of non-space characters that are not letters (digits, punctuation, symbols)."""
    chars = [c for c in text if not c.isspace()]
    return sum(1 for c in chars if not c.isalpha()) / len(chars) if chars else 0.0


def token_lengths(rows: list[dict], tokenizer) -> pd.DataFrame:
    """Tokens per row as the model sees it (chats under the chat template, texts with special
    tokens) and, for chats, the loss tokens; 01 shows these numbers, 02 drops rows by them."""
    ids = [r["id"] for r in rows]
    if rows and "messages" in rows[0]:
        enc = [chat.encode(tokenizer, r["messages"], max_length=10**9) for r in rows]
        return pd.DataFrame({"id": ids, "tokens": [len(e.input_ids) for e in enc],
                             "loss_tokens": [e.n_loss_tokens for e in enc]})
    texts = [r["text"] for r in rows]
    tokens = [len(i) for i in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []
    return pd.DataFrame({"id": ids, "tokens": tokens}, columns=["id", "tokens"])


def max_tokens(cfg: Config) -> tuple[int | None, str]:
    """The token limit rows are dropped above (None: no limit) and the setting it comes from."""
    # Chat: a cut example loses its answer's end (and end-of-turn token), so the model never
    # learns to stop. Classification keeps long texts unless asked: the classifier reads the
    # first max_length tokens, which in short texts carry the label.
    if cfg.clean.max_tokens is not None:
        return cfg.clean.max_tokens, "clean.max_tokens"
    if cfg.experiment.task == "chat":
        return cfg.model.max_length, "model.max_length, as clean.max_tokens is unset"
    return None, "no limit for classification while clean.max_tokens is unset"


def iqr_fences(values: list[float], k: float) -> tuple[float, float]:
    """Tukey's fences (Q1 - k*IQR, Q3 + k*IQR): values outside are outliers."""
    q1, q3 = np.percentile(values, [25, 75]) if values else (0.0, 0.0)
    return float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def filter_rows(rows: list[dict], cfg: Config, tokenizer, ledger: Ledger) -> list[dict]:
    """Drop rows too short, too noisy, too long for the model, or (if asked) length outliers."""
    c = cfg.clean
    kept = []
    for row in rows:
        texts = [m["content"] for m in row["messages"]] if "messages" in row else [row["text"]]
        shortest = min(texts, key=len)
        if len(shortest) < c.min_chars:
            what = "a turn" if "messages" in row else "the text"
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
    lengths = token_lengths(kept, tokenizer)["tokens"].tolist()
    lo, hi = iqr_fences(lengths, c.outlier_iqr_k) if c.outlier_iqr_k is not None else (-np.inf, np.inf)
    out = []
    for row, n in zip(kept, lengths):
        if limit is not None and n > limit:
            what = "too long, would be truncated" if "messages" in row else "too long"
            ledger.reject(row, "too_long", f"{what}: {n} tokens > {limit} ({setting})")
        elif not lo <= n <= hi:
            ledger.reject(row, "length_outlier", f"{n} tokens is outside the IQR fences [{lo:.0f}, {hi:.0f}] "
                                                 f"(clean.outlier_iqr_k: {c.outlier_iqr_k})")
        else:
            out.append(row)
    return out


# ---------------------------------------------------------------- duplicates

def dedup_key(row: dict) -> str:
    """What makes two rows the same: case- and space-insensitive text (every turn, for chats)."""
    def norm(t: str) -> str:
        return " ".join(t.casefold().split())

    if "messages" in row:
        return json.dumps([(m["role"], norm(m["content"])) for m in row["messages"]])
    return norm(row["text"])


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
        labels = sorted({r["label"] for r in same}) if "label" in row else []
        if len(labels) > 1:  # a model cannot learn both: a person must decide
            others = ", ".join(r["source"] for r in same if r is not row)
            ledger.reject(row, "label_conflict", f"the same text is labelled {labels} (also at {others}); "
                                                 f"fix the labels in the source file")
        elif same[0] is not row:
            ledger.reject(row, "duplicate", f"exact duplicate of {same[0]['source']}")
        else:
            kept.append(row)
    return kept


def shingles(text: str, k: int = 5) -> set[bytes]:
    """Character k-grams of the lowercased, space-collapsed text (robust for short texts too)."""
    t = " ".join(text.casefold().split())
    return {t[i:i + k].encode() for i in range(max(1, len(t) - k + 1))}


def similar_pairs(texts: list[str], threshold: float, seed: int, num_perm: int = 128) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j whose shingle Jaccard similarity is >= threshold (MinHash LSH)."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(t) for t in texts]
    hashes = MinHash.bulk(sets, num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
    pairs = []
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if j > i:  # LSH gives candidates; the exact Jaccard decides (no false positives)
                sim = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
                if sim >= threshold:
                    pairs.append((i, j, sim))
    return sorted(pairs)


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
                if "label" in rows[j] and rows[i]["label"] != rows[j]["label"] else ""
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
    """'Balanced' class weights n / (k * n_label) of the training labels, for a weighted loss."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = sorted({r["label"] for r in train})
    weights = compute_class_weight("balanced", classes=np.array(labels), y=[r["label"] for r in train])
    return {l: round(float(w), 4) for l, w in zip(labels, weights)}


# ---------------------------------------------------------------- accounting

def accounting(ledger: Ledger, splits: dict[str, list[dict]]) -> pd.DataFrame:
    """Input = kept + dropped per rule, as a table; raises if the numbers do not reconcile."""
    kept_ids = {r["id"] for rows in splits.values() for r in rows if r["id"] in ledger.originals}
    dropped = ledger.dropped()
    # Raised, not `assert`ed: python -O must not skip the check that no row went missing.
    if len(kept_ids) + sum(dropped.values()) != ledger.input:
        raise AssertionError(f"accounting: {ledger.input} input rows != {len(kept_ids)} kept + "
                             f"{sum(dropped.values())} dropped; a step lost rows without a reject")
    both = kept_ids & {json.loads(r["raw"]).get("id") for r in ledger.rejects}
    if both:
        raise AssertionError(f"accounting: rows both kept and rejected: {sorted(both)[:5]}")
    lines = [{"step": "input", "rows": ledger.input, "changed": None}]
    for rule, n in ledger.changed.items():
        lines.append({"step": f"changed by {rule}", "rows": None, "changed": n})
    for rule, n in dropped.items():
        lines.append({"step": f"dropped: {rule}", "rows": -n, "changed": None})
    lines.append({"step": "kept", "rows": len(kept_ids), "changed": None})
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


def group_key(rows: list[dict]) -> str | None:
    """What rows are grouped by in per-group views: label, else topic (if chats have topics)."""
    if rows and "label" in rows[0]:
        return "label"
    return "topic" if any(r.get("topic") for r in rows) else None


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


def metrics(ledger: Ledger, splits: dict[str, list[dict]]) -> dict:
    """The numbers 02 records under metrics["clean"]."""
    key = split_key(splits)
    out = {
        "input": ledger.input,
        "kept": len({r["id"] for rows in splits.values() for r in rows if r["id"] in ledger.originals}),
        "dropped": dict(ledger.dropped()),
        "changed": dict(ledger.changed),
        "added": dict(ledger.added),
        "splits": {name: len(rows) for name, rows in splits.items()},
        f"{key}s": {name: dict(Counter(r.get(key) or "" for r in rows)) for name, rows in splits.items()},
    }
    if key == "label":
        out["class_weights"] = class_weights(splits["train"])
    return out


# ---------------------------------------------------------------- the steps, in order

# The one order of the steps. clean_all calls exactly these, in this order, and so do the cells
# of 02-clean-data (which show each step's result in between); tests/test_clean.py reads both
# and fails if either skips, adds or reorders a step. Each step decides from cfg whether it acts.
STEPS = ("normalize", "filter_rows", "dedup_exact", "dedup_near", "similarity_groups", "split_rows",
         "balance", "accounting")


def clean_all(rows: list[dict], cfg: Config, tokenizer) -> tuple[dict[str, list[dict]], Ledger]:
    """Every step of 02 in STEPS order: the splits to write and the ledger of what was done."""
    ledger = Ledger.of(rows)
    rows = normalize(rows, cfg, ledger)
    rows = filter_rows(rows, cfg, tokenizer, ledger)
    rows = dedup_exact(rows, cfg, ledger)
    rows = dedup_near(rows, cfg, ledger)
    groups = similarity_groups(rows, cfg.clean.group_threshold, cfg.experiment.seed)
    splits = split_rows(rows, cfg, groups)
    splits["train"] = balance(splits["train"], cfg, ledger)
    accounting(ledger, splits)
    return splits, ledger
