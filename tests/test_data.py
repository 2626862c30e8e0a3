"""Loading each format into the task schema; bad rows set aside with exact reasons."""
import json

import pytest

from helpers import data, schema
from helpers.config import load_config
from helpers.schema import DataError


def cfg_for(source, task="chat", **extra):
    return load_config(None, {"data.source": str(source), "experiment.task": task, **extra})


def test_openai_chat_jsonl(fixtures):
    out = data.load(cfg_for(fixtures / "chat_ok.jsonl"))
    assert len(out.rows) == 6 and not out.problems
    assert all(r["messages"][-1]["role"] == "assistant" for r in out.rows)
    assert out.rows[0]["source"] == "chat_ok.jsonl:1"


def test_bad_chat_rows_are_set_aside_with_reasons(fixtures):
    out = data.load(cfg_for(fixtures / "chat_bad.jsonl"))
    assert [r["source"] for r in out.rows] == ["chat_bad.jsonl:1", "chat_bad.jsonl:8"]
    reasons = {p["source"].split(":")[1]: p["reason"] for p in out.problems}
    assert reasons["2"].startswith("invalid JSON")
    assert "no 'messages' field" in reasons["3"]
    assert "unknown role 'bot'" in reasons["4"]
    assert "(assistant) has empty content" in reasons["5"]
    assert reasons["6"] == "only a system turn"
    assert "ends with a user turn" in reasons["7"]


def test_strict_mode_stops_on_bad_rows(fixtures):
    with pytest.raises(DataError, match=r"(?s)6 bad rows .*chat_bad.jsonl:2"):
        data.load(cfg_for(fixtures / "chat_bad.jsonl", **{"data.strict": True}))


def test_sharegpt_alpaca_and_csv_pairs(fixtures):
    share = data.load(cfg_for(fixtures / "sharegpt.jsonl")).rows
    assert {m["role"] for r in share for m in r["messages"]} <= {"system", "user", "assistant"}
    alpaca = data.load(cfg_for(fixtures / "alpaca.json")).rows
    assert len(alpaca) == 4 and [m["role"] for m in alpaca[0]["messages"]] == ["user", "assistant"]
    pairs = data.load(cfg_for(fixtures / "pairs.csv")).rows
    assert len(pairs) == 5


def test_labelled_csv_with_typo_and_empty_fields(fixtures):
    cfg = cfg_for(fixtures / "labels_bad.csv", "classification", **{"data.labels": ["negative", "neutral", "positive"]})
    out = data.load(cfg)
    reasons = [p["reason"] for p in out.problems]
    assert any("unknown label 'postive'" in r and "did you mean 'positive'" in r for r in reasons)
    assert "missing label" in reasons and "empty text" in reasons
    assert len(out.rows) + len(out.problems) == 8


def test_non_utf8_csv_is_read_as_cp1252_and_said_so(fixtures):
    with pytest.warns(UserWarning, match=r"latin1.csv is not UTF-8 .*iconv -f cp1252 -t utf-8"):
        out = data.load(cfg_for(fixtures / "latin1.csv", "classification"))
    assert out.rows[0]["text"] == "The café at gate A2 was great" and out.notes


def test_empty_file_is_a_clear_error(fixtures):
    with pytest.raises(DataError, match="no usable rows .*empty"):
        data.load(cfg_for(fixtures / "empty.jsonl"))


def test_missing_source_and_task_mismatch(fixtures):
    with pytest.raises(DataError, match="neither a bundled name"):
        data.load(cfg_for("no/such/file.jsonl"))
    with pytest.raises(DataError, match="for the classification task"):
        data.load(cfg_for("airline", "chat"))
    with pytest.raises(DataError, match="holds chats"):
        data.load(cfg_for(fixtures / "chat_ok.jsonl", "classification"))


def test_bundled_chatterbot_pairs_keep_topic():
    out = data.load(cfg_for("chatterbot", **{"data.topics": ["greetings", "food"]}))
    assert {r["topic"] for r in out.rows} == {"greetings", "food"}
    assert all(len(r["messages"]) == 2 for r in out.rows)
    with pytest.raises(DataError, match="unknown .*nope"):
        data.load(cfg_for("chatterbot", **{"data.topics": ["nope"]}))


def test_bundled_airline_counts():
    out = data.load(cfg_for("airline", "classification"))
    assert len(out.rows) == 14638 and schema.labels_of(out.rows) == ["negative", "neutral", "positive"]
    assert all(data.AIRLINE_HANDLES.search(r["text"]) for r in out.rows[:200])


def test_max_examples_is_a_seeded_subsample():
    a = data.load(cfg_for("airline", "classification", **{"data.max_examples": 50})).rows
    b = data.load(cfg_for("airline", "classification", **{"data.max_examples": 50})).rows
    c = data.load(cfg_for("airline", "classification", **{"data.max_examples": 50, "experiment.seed": 1})).rows
    assert len(a) == 50 and a == b and a != c


def test_system_prompt_added_only_where_missing(fixtures):
    out = data.load(cfg_for("support", **{"data.system_prompt": "Be brief."}))
    assert all(r["messages"][0]["role"] == "system" for r in out.rows)
    assert sum(r["messages"][0]["content"] == "Be brief." for r in out.rows) == 6  # 6 support chats have none


def test_jsonl_round_trip(tmp_path):
    rows = [{"id": "a", "text": "café", "label": "x"}]
    assert data.read_jsonl(data.write_jsonl(tmp_path / "r.jsonl", rows)) == rows
    with pytest.raises(DataError, match="run the stage that writes it"):
        data.read_jsonl(tmp_path / "missing.jsonl")


def test_purposeful_filters_are_counted_not_silent():
    out = data.load(cfg_for("airline", "classification", **{"data.max_examples": 100}))
    reasons = out.filtered
    assert reasons["not addressed to a US airline handle (the airline set is defined that way)"] == 38158 - 14638
    assert reasons["left out by the data.max_examples=100 subsample"] == 14638 - 100
    assert len(out.rows) == 100


def test_csv_sources_name_the_file_line_even_with_multiline_fields(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('text,label\n"two\nlines",a\n\nplain,b\n', encoding="utf-8")
    out = data.load(cfg_for(f, "classification"))
    assert [r["source"] for r in out.rows] == ["m.csv:3", "m.csv:5"]


def test_a_corrupt_stage_file_names_file_and_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid JSON"):
        data.read_jsonl(f)


def test_a_huge_line_loads_and_a_huge_broken_line_is_a_short_problem(tmp_path):
    f = tmp_path / "huge.jsonl"
    answer = "word " * 200_000  # a 1 MB line
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": answer}]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(good)[:500_000] + "\n")
    out = data.load(cfg_for(f))
    assert len(out.rows) == 1 and len(out.rows[0]["messages"][1]["content"]) == len(answer)
    (problem,) = out.problems
    assert problem["source"] == "huge.jsonl:2" and problem["reason"].startswith("invalid JSON")
    assert len(problem["raw"]) <= 2000  # the rejects file stays readable


def test_row_texts_and_with_texts_for_both_shapes():
    chat = {"id": "c", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                    {"role": "assistant", "content": "A"}], "topic": "t", "source": "c"}
    text = {"id": "t", "text": "T", "label": "pos", "source": "t"}
    assert schema.row_texts(chat) == [("system", "S"), ("user", "Q"), ("assistant", "A")]
    assert schema.row_texts(text) == [(schema.TEXT, "T")]
    new = schema.with_texts(chat, ["s", "q", "a"])
    assert [m["content"] for m in new["messages"]] == ["s", "q", "a"] and list(new) == list(chat)
    assert chat["messages"][1]["content"] == "Q"  # a copy: the row given is unchanged
    assert schema.with_text(text, 0, "u") == {"id": "t", "text": "u", "label": "pos", "source": "t"} and text["text"] == "T"
    with pytest.raises(ValueError, match="2 texts for 3 turns"):
        schema.with_texts(chat, ["a", "b"])
