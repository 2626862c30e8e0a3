"""Decode a user's text file (UTF-8 with or without BOM, UTF-16/32, Windows-1252), saying how it was read."""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

from .schema import DataError

# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE")]


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
    """UTF-8 if every line is; Windows-1252 if most of the non-ASCII lines are not UTF-8; else UTF-8 with the
    odd lines set aside, since a mostly-UTF-8 file with a few pasted-in lines must not be decoded wholesale.

    Most, not all: in a legacy file a few lines are valid UTF-8 by chance (cp1252's "Ã¯" is UTF-8's "ï");
    a tweet corpus of 23,520 lines had 4,101 non-UTF-8 lines and 18 such, and setting aside the 4,101
    would have dropped 17% of the user's rows."""
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
    if len(bad) > good_non_ascii:
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

