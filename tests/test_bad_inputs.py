"""Bad inputs, one table: each row is a file (or params text) a user might bring, and what must happen.

Outcomes: "loaded" (every record kept), "set aside" (n records go to problems with a rule and a reason
matching a pattern, the rest load), "stopped" (a clear error matching a pattern, before anything trains).
For every row that loads, the accounting holds: input records = loaded + set aside. docs/bad-input.md
lists these cases as the promise to users; keep the two in step.
"""
from __future__ import annotations

import codecs
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from helpers import bookkeeping, clean, config, data, models, pipeline, report, runs, schema
from helpers.config import ConfigError
from helpers.schema import DataError

LOADED, ASIDE, STOPPED = "loaded", "set aside", "stopped"


def csv_text(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return "\n".join([header] + [f"{t},{l}" for t, l in rows]) + "\n"


def chat_line(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                      ensure_ascii=False)


TWEETS = [("the crew was kind", "positive"), ("lost my bag again", "negative"), ("gate moved to C4", "neutral"),
          ("lovely smooth flight", "positive"), ("two hours late", "negative")]
TWEETS_CSV = csv_text(TWEETS)
CHATS = "\n".join(chat_line(f"Question {i}?", f"Answer {i}.") for i in range(3)) + "\n"


def unclosed_quote_csv() -> str:
    """40 data rows, some quoted; row 6 (file line 7) opens a quote it never closes."""
    rows = [(f'"row {i}, quoted"' if i % 7 == 0 else f"row {i} plain", "positive" if i % 2 else "negative")
            for i in range(40)]
    rows[5] = ('"row 5 opens a quote and never closes', "positive")
    return csv_text(rows)


def quiet_swallow_csv() -> str:
    """A quote opened on line 3 is closed by a stray quote on line 7 that happens to precede a comma."""
    return csv_text([("fine one", "positive"), ('"opens here', "positive"), ("row a", "negative"),
                     ("row b", "positive"), ("row c", "negative"), ('5 inch"', "neutral"), ("after", "negative")])


@dataclass
class Case:
    id: str
    file: str  # file name; its suffix picks the format
    content: bytes | str
    records: int  # data records in the file (what the user counts)
    expect: str
    match: str = ""  # pattern the reasons (set aside) or the error (stopped) must match
    aside: int = 0
    rule: str = ""
    task: str = "classification"
    over: dict[str, Any] = field(default_factory=dict)
    check: Callable[[schema.Loaded], bool] | None = None  # more about the values loaded


def texts(out: schema.Loaded) -> list[str]:
    return [r["text"] for r in out.rows]


CASES = [
    # ---- encodings: one reader for every format
    Case("utf8-bom-jsonl", "c.jsonl", codecs.BOM_UTF8 + CHATS.encode(), 3, LOADED, task="chat",
         check=lambda out: out.rows[0]["messages"][0]["content"] == "Question 0?"),
    Case("utf8-bom-csv", "t.csv", codecs.BOM_UTF8 + TWEETS_CSV.encode(), 5, LOADED,
         check=lambda out: texts(out)[0] == "the crew was kind"),
    Case("utf16-le-bom-csv", "t.csv", codecs.BOM_UTF16_LE + TWEETS_CSV.encode("utf-16-le"), 5, LOADED,
         check=lambda out: texts(out) == [t for t, _ in TWEETS] and "UTF-16 LE" in out.notes[0]),
    Case("utf16-be-bom-jsonl", "c.jsonl", codecs.BOM_UTF16_BE + CHATS.encode("utf-16-be"), 3, LOADED, task="chat"),
    Case("utf16-le-no-bom-csv", "t.csv", TWEETS_CSV.encode("utf-16-le"), 5, LOADED,
         check=lambda out: texts(out)[1] == "lost my bag again" and "no byte-order mark" in out.notes[0]),
    Case("cp1252-csv", "t.csv", csv_text([("\u201cgreat\u201d crew \u2013 10\u20ac well spent", "positive"),
                                          ("caf\u00e9 closed", "negative")]).encode("cp1252"), 2, LOADED,
         check=lambda out: texts(out)[0] == "\u201cgreat\u201d crew \u2013 10\u20ac well spent"
         and "iconv -f cp1252 -t utf-8" in out.notes[0] and "Windows-1252" in out.notes[0]),
    Case("cp1252-jsonl", "t.jsonl", (json.dumps({"text": "\u201cok\u201d", "label": "a"}, ensure_ascii=False) + "\n"
                                     + json.dumps({"text": "fine", "label": "b"}) + "\n").encode("cp1252"), 2, LOADED,
         check=lambda out: texts(out)[0] == "\u201cok\u201d"),
    Case("one-pasted-line-jsonl", "c.jsonl", (chat_line("Caf\u00e9?", "Oui.") + "\n").encode() +
         (chat_line("Na\u00efve?", "No.") + "\n").encode("cp1252") + CHATS.encode(), 5, ASIDE,
         r"line 2|not UTF-8 \(byte 0xef", aside=1, rule="encoding", task="chat"),
    # A legacy file in which one line is valid UTF-8 by chance ("naÃ¯ve" in cp1252 bytes): most lines decide.
    Case("cp1252-with-a-utf8-looking-line", "t.csv",
         csv_text([("na\u00c3\u00afve idea", "a"), ("caf\u00e9 closed", "b"), ("\u201cgreat\u201d", "a")]).encode("cp1252"),
         3, LOADED, check=lambda out: texts(out) == ["na\u00c3\u00afve idea", "caf\u00e9 closed", "\u201cgreat\u201d"]
         and "Windows-1252" in out.notes[0]),
    Case("neither-utf8-nor-cp1252", "t.csv", b"text,label\nbad \x81 byte,a\nok,b\n", 2, STOPPED,
         r"not UTF-8 .*not Windows-1252 either .*iconv -f ENCODING"),
    # ---- CSV structure
    Case("unclosed-quote", "q.csv", unclosed_quote_csv(), 40, ASIDE,
         r"starting at line 7 is not closed.*Reading went on at line 8", aside=1, rule="quote",
         check=lambda out: len(out.rows) == 39 and "row 39 plain" in texts(out)),
    Case("quote-closed-by-chance", "q.csv", quiet_swallow_csv(), 7, ASIDE,
         r"a quote opened at line 3 runs on to line 7, taking in 3 lines", aside=1, rule="quote",
         check=lambda out: texts(out) == ["fine one", "row a", "row b", "row c", '5 inch"', "after"]),
    Case("multi-line-text-is-fine", "m.csv", 'text,label\n"Dear team,\nthe flight, was late\nthanks",negative\n'
         + csv_text(TWEETS).split("\n", 1)[1], 6, LOADED,
         check=lambda out: texts(out)[0] == "Dear team,\nthe flight, was late\nthanks"),
    Case("field-over-128kb", "big.csv", csv_text([("long " * 50_000, "positive")] + TWEETS), 6, LOADED,
         check=lambda out: len(texts(out)[0]) == 250_000),
    Case("unquoted-comma", "t.csv", csv_text([("great, really", "positive")] + TWEETS), 6, ASIDE,
         r"3 fields where the header has 2", aside=1, rule="csv"),
    # ---- labels
    Case("label-typos", "t.csv", csv_text(TWEETS * 3 + [("loved it", "postive"), ("awful", "negatve")]), 17, ASIDE,
         r"did you mean '(positive|negative)'", aside=2, rule="label"),
    Case("numbered-labels-are-meant", "t.csv", csv_text([(f"text {i}", f"class{i % 2 + 1}") for i in range(8)]),
         8, LOADED),
    Case("single-class", "t.csv", csv_text([(f"text {i}", "positive") for i in range(6)]), 6, STOPPED,
         r"every usable row has the label 'positive' .*at least two labels"),
    # ---- chat formats
    Case("openai-text-parts", "c.jsonl", json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two?"}]},
        {"role": "assistant", "content": "Yes."}]}) + "\n" + CHATS, 4, LOADED, task="chat",
         check=lambda out: out.rows[0]["messages"][0]["content"] == "Part one.\nPart two?"),
    Case("openai-image-part", "c.jsonl", json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:,x"}}]},
        {"role": "assistant", "content": "A cat."}]}) + "\n" + CHATS, 4, ASIDE,
         r"message 0 \(user\) has a 'image_url' content part", aside=1, rule="schema", task="chat"),
    Case("cut-json-line", "c.jsonl", CHATS + '{"messages": [{"role": "user"\n', 4, ASIDE, r"invalid JSON",
         aside=1, rule="json", task="chat"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_file(case, tmp_path):
    path = tmp_path / case.file
    path.write_bytes(case.content if isinstance(case.content, bytes) else case.content.encode("utf-8"))
    cfg = config.load_config(None, {"data.source": str(path), "experiment.task": case.task, **case.over})
    if case.expect == STOPPED:
        with pytest.raises(DataError, match=case.match):
            data.load(cfg)
        return
    with warnings.catch_warnings():  # the notes are warnings too; the checks read out.notes
        warnings.simplefilter("ignore")
        out = data.load(cfg)
    assert len(out.rows) + len(out.problems) == case.records, "input records = loaded + set aside"
    assert len(out.problems) == case.aside, [p["reason"] for p in out.problems]
    for p in out.problems:
        assert p["rule"] == case.rule and re.search(case.match, p["reason"]), p
    if case.check:
        assert case.check(out)


# ---------------------------------------------------------------- params and overrides

PARAMS_CASES = [
    ("name-climbs-out", "experiment: {name: ../../../somewhere/x}\n", [], r"p.yaml.*experiment.name.*safe run folder"),
    ("name-absolute", "experiment: {name: /srv/x}\n", [], r"experiment.name.*safe run folder name.*e.g. chat-faq"),
    ("name-with-markup", "experiment: {name: 'a\" onmouseover=\"alert(1)'}\n", [], r"experiment.name"),
    ("name-with-dots", "experiment: {name: a..b}\n", [], r"no '\.\.'"),
    ("set-not-yaml", "experiment: {name: ok}\n", ["data.labels=[a, b"], r"override 'data.labels'.*not valid YAML"),
    ("extends-missing", "extends: nope.yaml\nexperiment: {name: ok}\n", [], r"p.yaml: `extends: nope.yaml` names a file"),
    ("fine", "experiment: {name: chat-faq_v2.1}\n", ["tune.max_steps=3"], None),
]


@pytest.mark.parametrize("name, text, overrides, error", PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
def test_bad_params(name, text, overrides, error, tmp_path):
    (tmp_path / "p.yaml").write_text(text)
    if error is None:
        assert config.load_config(tmp_path / "p.yaml", overrides).tune.max_steps == 3
        return
    with pytest.raises(ConfigError, match=f"(?s){error}"):
        config.load_config(tmp_path / "p.yaml", overrides)


def test_a_bad_name_never_makes_a_folder(reports, tmp_path):
    with pytest.raises(ConfigError):
        runs.open_run("", params_file=None, overrides={"experiment.name": str(tmp_path / "elsewhere")}, create=True)
    assert not (tmp_path / "elsewhere").exists() and not list(tmp_path.glob("elsewhere*"))


# ---------------------------------------------------------------- cleaning (02)

def rows_of(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"id": f"f:{i}", "source": f"f:{i}", "text": t, "label": l} for i, (t, l) in enumerate(pairs)]


CLEAN_CASES = [
    ("entity-encoded-script", "&lt;script&gt;alert(1)&lt;/script&gt; bad flight", "alert(1) bad flight"),
    ("double-encoded-script", "&amp;lt;script&amp;gt;x&amp;lt;/script&amp;gt;", "&lt;script&gt;x&lt;/script&gt;"),
    ("nested-tag", "<scr<b>ipt>alert(1)</script> ok", "alert(1) ok"),
    ("encoded-bold", "&lt;b&gt;great&lt;/b&gt; crew", "great crew"),
]


@pytest.mark.parametrize("name, text, cleaned", CLEAN_CASES, ids=[c[0] for c in CLEAN_CASES])
def test_cleaning_leaves_no_tag(name, text, cleaned):
    cfg = config.load_config(None, {"experiment.task": "classification"})
    ledger = bookkeeping.Ledger.of(rows_of([(text, "a")]))
    (row,) = clean.normalize(rows_of([(text, "a")]), cfg, ledger)
    assert row["text"] == cleaned and "<script" not in row["text"].lower()


def similar_family(sentence: str, n: int, label: str) -> list[tuple[str, str]]:
    return [(f"{sentence} {i}", label) for i in range(n)]


SPLIT_CASES = [
    # 10 rows in 2 groups of similar rows: the message counts rows, names the groups and the setting.
    ("few-groups", similar_family("the flight to boston was late again and the crew said sorry", 5, "a")
     + similar_family("my bag never arrived at the hotel and nobody called me back", 5, "b"), {"clean.dedup_near": False},
     r"only 10 rows are left after cleaning in 2 groups of similar rows \(clean.group_threshold: 0.6"),
    ("three-rows", [("alpha one", "a"), ("bravo two", "b"), ("charlie three", "a")],
     {"clean.group_threshold": None, "data.split.validation": 0.3, "data.split.test": 0.3},
     r"training split holds only \['.'\]"),
    ("one-label-left", [(f"text number {w}", "a") for w in "abcdef"], {"clean.group_threshold": None},
     r"every kept row has the label 'a'"),
]


def test_three_chats_stop_instead_of_splitting_one_one_one():
    chats = [{"id": f"c{i}", "source": f"f.jsonl:{i}", "messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for i, (q, a) in enumerate([("hi there", "hello!"), ("what is the time", "noon"), ("bye now", "see you")])]
    cfg = config.load_config(None, {"experiment.task": "chat", "clean.group_threshold": None})
    with pytest.raises(DataError, match=r"only 3 rows .* fewer than clean.min_rows \(10\): splits of 1 / 1 / 1"):
        clean.split_rows(chats, cfg)


@pytest.mark.parametrize("name, pairs, over, error", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_split_stops_with_a_clear_error(name, pairs, over, error, clean_02):
    cfg = config.load_config(None, {"experiment.task": "classification", **over})
    with pytest.raises(DataError, match=error) as e:
        clean_02(rows_of(pairs), cfg, None)
    assert "rejects.jsonl" not in str(e.value)  # not written yet when this stops


# ---------------------------------------------------------------- models, pages, files

def test_pickle_only_model_folder_says_how_to_convert(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ConfigError, match=r"(?s)only pickle weights \(pytorch_model.bin\).*"
                                          r"save_pretrained\(.*safe_serialization=True\)") as e:
        models.resolve(str(tmp_path))
    assert "Offline" not in str(e.value)


def test_links_in_notebook_06_are_escaped(tmp_path):
    evil = tmp_path / 'x" onmouseover="alert(1)' / "report.html"
    html = report.links_html({"Open <report>": evil})
    assert 'onmouseover="' not in html and "&lt;report&gt;" in html and html.count('"') == 4
    source = json.loads((pipeline.paths.NOTEBOOKS / "06-visualize-results.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in source["cells"] if c["cell_type"] == "code")
    assert "<a href" not in code and "report.links_html(" in code


def test_executed_notebook_html_needs_no_network(tmp_path):
    nb = tmp_path / "01-explore-data.ipynb"
    nb.write_bytes((pipeline.paths.NOTEBOOKS / "01-explore-data.ipynb").read_bytes())
    pipeline._to_html(nb)
    html = nb.with_suffix(".html").read_text()
    assert "Explore the data" in html
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", html) and "cdnjs" not in html


def test_pipeline_names_rows_set_aside_and_only_pages_that_exist(tmp_path):
    run = runs.Run(tmp_path / "r")
    data.write_jsonl(run.data / "problems.jsonl", [{"source": "f:2", "rule": "json", "reason": "x", "raw": ""}] * 2)
    data.write_jsonl(run.data / "rejects.jsonl", [])
    lines = "\n".join(pipeline.outcome_lines(run))
    assert f"2 rows set aside by validation (01): see {run.data / 'problems.jsonl'}" in lines
    assert "rejects" not in lines and "report: " not in lines and "no report.html (stage 06 did not run)" in lines
    (run.dir / "report.html").write_text("<html>")
    assert f"report: {run.dir / 'report.html'}" in "\n".join(pipeline.outcome_lines(run))


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = data.write_jsonl(tmp_path / "train.jsonl", [{"id": "a"}])
    with pytest.raises(TypeError):
        data.write_jsonl(path, [{"id": "b"}, {"id": object()}])  # fails after the first line
    assert data.read_jsonl(path) == [{"id": "a"}] and [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
