"""The text rules 02 applies to every text field, in their one order: mojibake, control characters, HTML
entities and tags, Unicode, PII, terminology, case, stop words, whitespace; and the patterns 01 counts."""
from __future__ import annotations

import html
import re
import unicodedata
from typing import Callable

from .config import Config, ConfigError

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
