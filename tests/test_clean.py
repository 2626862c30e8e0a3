"""Cleaning: each text rule, each drop rule with its exact reason, the split, and the accounting."""
import ast
import copy
import inspect
import json
from pathlib import Path

import pytest

from helpers import bookkeeping, chat, clean, config, data, explore, measures, models, schema, textrules
from helpers.config import ConfigError


def cfg_for(source, task="chat", **over):
    """A config on a fixture file, with dotted overrides."""
    return config.load_config(overrides={"experiment.task": task, "data.source": str(source), **over})


@pytest.fixture(scope="module")
def chat_tok():
    return models.load_tokenizer(config.load_config(overrides={"experiment.task": "chat"}))


@pytest.fixture(scope="module")
def cls_tok():
    return models.load_tokenizer(config.load_config(overrides={"experiment.task": "classification"}))


def labelled(texts_labels):
    return [{"id": f"t:{i}", "text": t, "label": l, "source": f"t:{i}"} for i, (t, l) in enumerate(texts_labels)]


# ---------------------------------------------------------------- text rules

def test_mojibake_is_repaired_but_stray_bytes_are_not_guessed():
    assert textrules.fix_mojibake("cafÃ© â€œquotedâ€\x9d") == "café “quoted”"
    assert textrules.fix_mojibake("itâ\x80\x99s") == "it’s"
    # lost emoji bytes in the airline tweets: not UTF-8 mojibake, left for control_chars
    assert textrules.fix_mojibake("thanks _\x99\x85ê") == "thanks _\x99\x85ê"
    assert textrules.remove_control_chars("thanks _\x99\x85ê\tok\n") == "thanks _ê\tok\n"


def test_html_tags_only_tag_shaped_and_never_in_code():
    strip = textrules.outside_code(textrules.strip_html_tags)
    assert textrules.collapse_whitespace(strip("<p>Hi <b>there</b></p>")) == "Hi there"
    assert strip("a < b and <3 and <EMAIL>") == "a < b and <3 and <EMAIL>"
    code = "Use:\n```\nrender(<MyComponent />)\n```\nand `<br>` inline"
    assert strip(code) == code


def test_whitespace_collapses_but_keeps_code_and_indentation():
    text = "Hi   there \n\n\n\nLook:\n```\ndef f():\n    return  1\n```\n   "
    assert textrules.collapse_whitespace(text) == "Hi there\n\nLook:\n```\ndef f():\n    return  1\n```"


def test_pii_placeholders_and_what_is_not_pii():
    text = ("mail jane.doe@example.com or call (555) 123-4567 / +44 20 7946 0958 / 1-800-433-7300, "
            "card 4111 1111 1111 1111, ip 10.0.0.1, @jane_d")
    assert textrules.scrub_pii(text, list(textrules.PLACEHOLDERS)) == (
        "mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>, card <CARD>, ip <IP>, <USER>")
    kept = "claim #3526665682, 99.99999999% sure, order 4111111111111112, v1.2.3.4.5, at 10:15"
    assert textrules.scrub_pii(kept, list(textrules.PLACEHOLDERS)) == kept
    assert textrules.scrub_pii("@united hi", ["email", "phone", "card", "ip"]) == "@united hi"  # default: handles kept


def test_terminology_whole_words_any_case():
    assert textrules.apply_terminology("E-mail me; my e-mails and WiFi", {"e-mail": "email", "wifi": "Wi-Fi"}) == \
        "email me; my e-mails and Wi-Fi"


def test_stopword_removal_keeps_negations():
    assert textrules.remove_stopwords("The flight was not on time and it is never good") == "flight not time never good"


def test_lowercase_for_chat_is_refused():
    with pytest.raises(ConfigError, match="classification only"):
        textrules.text_rules(config.load_config(overrides={"clean.lowercase": True}))


def test_normalize_every_chat_turn_counts_changes_and_leaves_input_alone():
    rows = [{"id": "a", "source": "a", "topic": "", "messages": [
        {"role": "system", "content": "Be  brief."},
        {"role": "user", "content": "Q&amp;A for ｆｕｌｌ width? mail me at a@b.com"},
        {"role": "assistant", "content": "<b>Sure</b>."}]},
        {"id": "b", "source": "b", "topic": "", "messages": [
            {"role": "user", "content": "fine"}, {"role": "assistant", "content": "ok"}]}]
    before = copy.deepcopy(rows)
    ledger = bookkeeping.Ledger.of(rows)
    out = clean.normalize(rows, config.load_config(), ledger)
    assert rows == before
    assert [m["content"] for m in out[0]["messages"]] == ["Be brief.", "Q&A for full width? mail me at <EMAIL>", "Sure ."]
    assert out[1] == rows[1]
    assert dict(ledger.changed) == {"html_tags": 1, "html_entities": 1, "unicode": 1, "pii": 1, "whitespace": 1}


# ---------------------------------------------------------------- drop rules

def test_too_long_chats_dropped_with_reason_and_raw_as_loaded(chat_tok):
    cfg = config.load_config(overrides={"model.max_length": 40})
    short = {"id": "s", "source": "f:1", "topic": "", "messages": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Hello!"}]}
    long = {"id": "l", "source": "f:2", "topic": "", "messages": [{"role": "user", "content": "Tell me a story. " * 10},
                                                                  {"role": "assistant", "content": "Once upon a time."}]}
    ledger = bookkeeping.Ledger.of([short, long])
    kept = clean.filter_rows([short, long], cfg, chat_tok, ledger)
    assert kept == [short]
    (rej,) = ledger.rejects
    assert set(rej) == {"source", "rule", "reason", "raw"}
    assert rej["source"] == "f:2" and rej["rule"] == "too_long"
    assert rej["reason"].startswith("too long even as windows: the chat has 88 tokens") and rej["reason"].endswith(
        "tokens > 40 (model.max_length, as clean.max_tokens is unset)")
    assert json.loads(rej["raw"]) == long


def test_too_short_and_noisy(cls_tok):
    rows = labelled([("ok fine", "a"), ("", "a"), ("!!!! 1234 ####", "b")])
    cfg = config.load_config(overrides={"experiment.task": "classification", "clean.min_chars": 1,
                                        "clean.max_symbol_share": 0.5})
    ledger = bookkeeping.Ledger.of(rows)
    assert clean.filter_rows(rows, cfg, cls_tok, ledger) == rows[:1]
    assert [(r["rule"], r["reason"]) for r in ledger.rejects] == [
        ("too_short", "the text has 0 characters after cleaning (clean.min_chars: 1)"),
        ("noisy", "100% of its characters are not letters (clean.max_symbol_share: 0.5)")]


def test_classification_keeps_long_texts_unless_max_tokens_is_set(cls_tok):
    rows = labelled([("word " * 100, "a"), ("short", "a")])
    base = {"experiment.task": "classification", "model.max_length": 16}
    assert clean.filter_rows(rows, config.load_config(overrides=base), cls_tok, bookkeeping.Ledger.of(rows)) == rows
    ledger = bookkeeping.Ledger.of(rows)
    cfg = config.load_config(overrides={**base, "clean.max_tokens": 16})
    assert clean.filter_rows(rows, cfg, cls_tok, ledger) == rows[1:]
    assert ledger.rejects[0]["reason"] == "too long: 102 tokens > 16 (clean.max_tokens)"
    assert clean.max_tokens(config.load_config(overrides=base)) == (
        None, "no limit for classification while clean.max_tokens is unset")


def test_token_lengths_one_definition_for_01_and_02(cls_tok, chat_tok):
    assert explore.token_lengths is measures.token_lengths and explore.group_key is schema.group_key
    lengths = measures.token_lengths(labelled([("short", "a"), ("word " * 10, "a")]), cls_tok, "classification")
    assert list(lengths.columns) == ["id", "tokens"] and lengths["tokens"].tolist() == [3, 12]  # [CLS] .. [SEP]
    chats = [{"id": "c", "source": "c", "topic": "", "messages": [{"role": "user", "content": "Hi"},
                                                                  {"role": "assistant", "content": "Hello!"}]}]
    assert list(measures.token_lengths(chats, chat_tok, "chat").columns) == ["id", "tokens", "loss_tokens"]
    assert measures.token_lengths([], cls_tok, "classification")["tokens"].tolist() == []


def test_exact_duplicates_and_label_conflicts():
    rows = labelled([("Great crew!", "pos"), ("great  CREW!", "pos"), ("Gate C4.", "neu"), ("gate c4.", "pos"),
                     ("Late again", "neg")])
    ledger = bookkeeping.Ledger.of(rows)
    cfg = config.load_config(overrides={"experiment.task": "classification"})
    assert [r["id"] for r in clean.dedup_exact(rows, cfg, ledger)] == ["t:0", "t:4"]
    assert [(r["source"], r["rule"], r["reason"]) for r in ledger.rejects] == [
        ("t:1", "duplicate", "exact duplicate of t:0"),
        ("t:2", "label_conflict", "the same text is labelled ['neu', 'pos'] (also at t:3); fix the labels in the source file"),
        ("t:3", "label_conflict", "the same text is labelled ['neu', 'pos'] (also at t:2); fix the labels in the source file")]
    off = bookkeeping.Ledger.of(rows)
    assert clean.dedup_exact(rows, config.apply_overrides(cfg, {"clean.dedup_exact": False}), off) == rows
    assert off.rejects == []


def test_near_duplicates_dropped_keeping_the_first():
    rows = labelled([("@united thank you so much!", "pos"), ("@united thank you so much.", "neu"),
                     ("my bag never arrived in Boston", "neg")])
    ledger = bookkeeping.Ledger.of(rows)
    cfg = config.load_config(overrides={"experiment.task": "classification"})
    assert [r["id"] for r in clean.dedup_near(rows, cfg, ledger)] == ["t:0", "t:2"]
    (rej,) = ledger.rejects
    assert rej["rule"] == "near_duplicate" and rej["reason"].startswith("near-duplicate of t:0 (similarity 0.")
    assert rej["reason"].endswith(">= 0.85); labels differ (pos vs neu)")


def test_similar_rows_share_a_group_and_a_split():
    texts = [f"my bag number {i} never arrived at the airport in Boston today" for i in range(6)]
    others = ["Great crew today", "Is wifi free on board?", "Lovely snacks", "Gate changed to C4",
              "Seats were comfy", "Landed early, thanks", "Where is my refund", "Boarding at ten"]
    rows = labelled([(t, "neg") for t in texts] + [(t, "pos") for t in others])
    groups = clean.similarity_groups(rows, 0.6, seed=1)
    assert len(set(groups[:6])) == 1 and len(set(groups)) == 1 + len(others)
    cfg = config.load_config(overrides={"experiment.task": "classification"})
    with pytest.warns(UserWarning, match="not stratified"):  # one 'neg' group: cannot be in every split
        splits = clean.split_rows(rows, cfg, groups)
    holding = [name for name, part in splits.items() if any("bag" in r["text"] for r in part)]
    assert len(holding) == 1


# ---------------------------------------------------------------- split

def test_stratified_split_exact_sizes(fixtures):
    cfg = cfg_for(fixtures / "labels.csv", "classification",
                  **{"data.split": {"validation": 0.25, "test": 0.25}})
    rows = data.load(cfg).rows
    splits = clean.split_rows(rows, cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "validation": 3, "test": 3}
    for name in ("validation", "test"):  # 3 rows over 3 labels: one of each
        assert sorted(r["label"] for r in splits[name]) == ["negative", "neutral", "positive"]
    assert sorted(r["id"] for p in splits.values() for r in p) == sorted(r["id"] for r in rows)


def test_support_chats_split_28_6_6_seeded(clean_02):
    cfg = config.load_config("params/smoke.yaml", {"clean.max_tokens": 10_000, "clean.group_threshold": None})
    rows = data.load(cfg).rows
    splits, ledger = clean_02(rows, cfg, models.load_tokenizer(cfg))
    assert {k: len(v) for k, v in splits.items()} == {"train": 28, "validation": 6, "test": 6}
    again, _ = clean_02(rows, cfg, models.load_tokenizer(cfg))
    assert again == splits
    other, _ = clean_02(rows, config.load_config("params/smoke.yaml", {
        "clean.max_tokens": 10_000, "clean.group_threshold": None, "experiment.seed": 7}), models.load_tokenizer(cfg))
    assert [r["id"] for r in other["test"]] != [r["id"] for r in splits["test"]]


def test_too_few_rows_is_a_clear_error():
    cfg = config.load_config(overrides={"experiment.task": "classification"})
    with pytest.raises(schema.DataError, match="only 2 rows .* left after cleaning"):
        clean.split_rows(labelled([("a b", "x"), ("c d", "y")]), cfg)


# ---------------------------------------------------------------- balance and accounting

def imbalanced():
    return labelled([(f"bad flight number {w}", "neg") for w in "abcdefgh"] +
                    [(f"great crew member {w}", "pos") for w in "ab"])


def test_oversample_equalizes_train_and_counts_added():
    cfg = config.load_config(overrides={"experiment.task": "classification", "clean.balance": "oversample"})
    rows = imbalanced()
    ledger = bookkeeping.Ledger.of(rows)
    out = clean.balance(rows, cfg, ledger)
    assert [r["label"] for r in out].count("pos") == 8 and len(out) == 16
    assert len({r["id"] for r in out}) == 16 and ledger.added == {"oversample": 6}
    table = bookkeeping.accounting(ledger, {"train": out, "validation": [], "test": []}).set_index("step")["rows"]
    assert table.to_dict() == {"input": 10, "kept": 10, "added: oversample (train copies)": 6}  # copies are not kept rows


def test_undersample_rejects_with_reason_and_reconciles():
    cfg = config.load_config(overrides={"experiment.task": "classification", "clean.balance": "undersample"})
    rows = imbalanced()
    ledger = bookkeeping.Ledger.of(rows)
    out = clean.balance(rows, cfg, ledger)
    assert sorted(r["label"] for r in out) == ["neg", "neg", "pos", "pos"]
    assert ledger.dropped() == {"undersample": 6}
    assert ledger.rejects[0]["reason"] == "label 'neg' undersampled to 2 training rows (clean.balance: undersample)"
    table = bookkeeping.accounting(ledger, {"train": out, "validation": [], "test": []})
    assert table.set_index("step").loc["kept", "rows"] == 4


def test_class_weights_balanced():
    assert clean.class_weights(imbalanced()) == {"neg": 0.625, "pos": 2.5}


def test_accounting_catches_a_lost_row():
    rows = imbalanced()
    ledger = bookkeeping.Ledger.of(rows)
    with pytest.raises(AssertionError, match="10 input rows != 9 kept \\+ 0 dropped"):
        bookkeeping.accounting(ledger, {"train": rows[:9], "validation": [], "test": []})


def test_accounting_catches_an_inconsistent_ledger():
    rows = imbalanced()
    ledger = bookkeeping.Ledger.of(rows)  # a row rejected twice: the books count 11 rows
    ledger.reject(rows[0], "duplicate", "x")
    ledger.reject(rows[0], "near_duplicate", "x")
    with pytest.raises(AssertionError, match="10 input rows != 9 kept \\+ 2 dropped"):
        bookkeeping.accounting(ledger, {"train": rows[1:], "validation": [], "test": []})
    ledger = bookkeeping.Ledger.of(rows)  # the totals add up, but row 0 is both kept and rejected (and row 9 lost)
    ledger.reject(rows[0], "noisy", "x")
    with pytest.raises(AssertionError, match="rows both kept and rejected: \\['t:0'\\]"):
        bookkeeping.accounting(ledger, {"train": rows[:9], "validation": [], "test": []})


def test_the_02_chain_drops_duplicates_and_label_conflicts(fixtures, cls_tok, clean_02):
    cfg = cfg_for(fixtures / "labels.csv", "classification", **{"data.split": {"validation": 0.25, "test": 0.25}})
    rows = data.load(cfg).rows
    rows = rows + [dict(rows[0], id="dup", source="dup"),  # an exact duplicate: the first copy stays
                   {"id": "c1", "source": "c1", "text": "Flight 22 was on time today.", "label": "positive"},
                   {"id": "c2", "source": "c2", "text": "flight 22 was ON time today.", "label": "neutral"}]
    splits, ledger = clean_02(rows, cfg, cls_tok)
    m = clean.metrics(ledger, splits)
    assert m["input"] == 15 and m["kept"] == 12 and m["dropped"] == {"label_conflict": 2, "duplicate": 1}
    assert [(r["source"], r["rule"]) for r in ledger.rejects] == [
        ("dup", "duplicate"), ("c1", "label_conflict"), ("c2", "label_conflict")]
    assert m["splits"] == {"train": 6, "validation": 3, "test": 3}
    assert m["labels"]["test"] == {"negative": 1, "neutral": 1, "positive": 1}
    assert m["class_weights"] == {"negative": 1.0, "neutral": 1.0, "positive": 1.0}


def test_duplicate_ids_are_refused():
    rows = labelled([("a", "x")]) * 2
    with pytest.raises(schema.DataError, match="row ids must be unique"):
        bookkeeping.Ledger.of(rows)


# ---------------------------------------------------------------- one order of steps

# clean.* calls in 02 that show or record results; every other clean.* call there must be a step.
VIEWS = {"text_rules", "examples_table", "rejects_table", "split_summary", "metrics"}


def calls(tree: ast.AST, on: str | None) -> list[str]:
    """Names of the functions called as `on.name(...)` (or bare `name(...)` if on is None), in source order."""
    found = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if on is None and isinstance(f, ast.Name):
            found.append((n.lineno, n.col_offset, f.id))
        elif on and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == on:
            found.append((n.lineno, n.col_offset, f.attr))
    return [name for *_, name in sorted(found)]


def test_steps_are_functions_and_the_tests_chain_calls_them_in_order(clean_02):
    assert all(callable(getattr(clean, s)) for s in clean.STEPS)
    body = ast.parse(inspect.getsource(clean_02))  # conftest.clean_as_02: what tests use for 02's splits
    assert calls(body, "clean") == list(clean.STEPS)


def test_notebook_02_calls_the_same_steps_in_the_same_order():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "02-clean-data.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    used = calls(ast.parse(code), "clean")
    assert [name for name in used if name not in VIEWS] == list(clean.STEPS), \
        "02-clean-data must call exactly clean.STEPS in order (a new display helper goes into VIEWS)"


def test_group_key_label_topic_or_none():
    chats = [{"id": "a", "source": "a", "topic": "", "messages": []}]
    assert schema.group_key(labelled([("a", "x")])) == "label" and schema.group_key(chats) is None
    assert schema.group_key([dict(chats[0], topic="food")]) == "topic"
    assert bookkeeping.split_key({"train": chats, "validation": [], "test": []}) == "topic"  # "(none)" rows


# ---------------------------------------------------------------- long chats as windows

def long_chat(i="c", exchanges=4):
    """A support chat with a system prompt and `exchanges` question/answer pairs, each ~43 tokens."""
    msgs = [{"role": "system", "content": "You are a support agent."}]
    for k in range(exchanges):
        msgs += [{"role": "user", "content": f"Question number {k}: how do I reset my password on device {k}?"},
                 {"role": "assistant", "content": f"Answer {k}: open settings, choose account {k}, then press reset."}]
    return {"id": i, "source": f"f:{i}", "topic": "", "messages": msgs}


def targets(window):
    """The answers a window trains on (assistant turns without weight 0)."""
    return [m["content"] for m in window if m["role"] == "assistant" and m.get("weight", 1) != 0]


def test_chat_windows_cover_every_answer_once_with_context_where_it_fits(chat_tok):
    chat_row = long_chat()
    assert measures.template_length(chat_tok, chat_row["messages"]) == 183
    wins = measures.chat_windows(chat_tok, chat_row["messages"], 150)
    answers = [m["content"] for m in chat_row["messages"] if m["role"] == "assistant"]
    assert [targets(w) for w in wins] == [answers[:3], answers[3:]]  # each answer once, in order
    for w in wins:
        assert w[0] == chat_row["messages"][0] and w[-1]["role"] == "assistant"  # system kept, ends on an answer
        assert measures.template_length(chat_tok, w) <= 150
    # The second window takes exchanges 1 and 2 back as context (their answers muted), not 0: no room.
    assert [m["content"][:8] for m in wins[1][1:]] == ["Question", "Answer 1", "Question", "Answer 2", "Question",
                                                       "Answer 3"]
    assert [m.get("weight", 1) for m in wins[1] if m["role"] == "assistant"] == [0, 0, 1]
    # chat.encode puts the loss on the target answer only.
    enc = chat.encode(chat_tok, wins[1], 10**9)
    assert chat.show_mask(chat_tok, enc).count("[[") == 1 and "Answer 3" in chat.show_mask(chat_tok, enc).split("[[")[1]
    assert measures.chat_windows(chat_tok, chat_row["messages"], 50) == []  # one exchange takes 54 tokens


def test_long_chats_are_windowed_in_their_split_and_counted(chat_tok):
    cfg = config.load_config(overrides={"model.max_length": 110, "clean.group_threshold": None,
                                        "clean.dedup_near": False, "data.split": {"validation": 0.2, "test": 0.2}})
    rows = [long_chat(f"c{k}", exchanges=1 if k % 2 else 4) for k in range(10)]
    for k, r in enumerate(rows):  # distinct texts, so nothing is a duplicate
        r["messages"][-1]["content"] += f" (ticket {k})"
    ledger = bookkeeping.Ledger.of(rows)
    kept = clean.filter_rows(rows, cfg, chat_tok, ledger)
    assert kept == rows and not ledger.rejects  # ~187 tokens > 110, but one exchange (~54) fits
    splits = clean.split_rows(kept, cfg)
    splits = clean.window_chats(splits, cfg, chat_tok, ledger)
    assert ledger.windowed == {f"c{k}": 2 for k in range(0, 10, 2)}
    for name, part in splits.items():
        for r in part:
            if "window_of" in r:  # windows sit in their chat's split, ids and sources numbered
                assert r["id"] == f"{r['window_of']}#w{r['id'][-1]}" and r["source"].endswith(r["id"][-3:])
    assert sum(len(p) for p in splits.values()) == 15  # 5 short chats + 5 long ones as 2 windows each
    table = clean.accounting(ledger, splits)
    assert table.set_index("step")["rows"].to_dict() == {
        "input": 10, "kept": 10, "added: windows (long chats kept as 10 windows)": 5}
    assert clean.metrics(ledger, splits)["windowed"] == {"chats": 5, "windows": 10}
    assert clean.metrics(ledger, splits)["kept"] == 10


def test_explicit_max_tokens_still_drops_long_chats(chat_tok):
    cfg = config.load_config(overrides={"model.max_length": 100, "clean.max_tokens": 100})
    row = long_chat()
    ledger = bookkeeping.Ledger.of([row])
    assert clean.filter_rows([row], cfg, chat_tok, ledger) == []
    assert ledger.rejects[0]["reason"] == "too long, would be truncated: 183 tokens > 100 (clean.max_tokens)"
    assert clean.window_chats({"train": [row]}, cfg, chat_tok, ledger) == {"train": [row]}


def test_an_unresolved_auto_length_is_a_clear_error(chat_tok):
    with pytest.raises(schema.DataError, match="still 'auto': stage 01"):
        clean.filter_rows([long_chat()], config.load_config(), chat_tok, bookkeeping.Ledger.of([long_chat()]))
