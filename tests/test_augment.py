"""Augmentation: offline WordNet, each op, seeded output, user turns only, training rows only."""
import copy
from random import Random
from typing import get_args

import pytest

from helpers import augment, config, data, models, sections, textops
from helpers.config import ConfigError

TEXT = "@united My flight was delayed again and the crew was rude. Please refund <EMAIL> now!"


def cfg_with(**over):
    return config.load_config("params/smoke.yaml", over)


@pytest.fixture(scope="module")
def support(clean_02):
    """The 40 support chats, cleaned and split as 02 does (no tokenizer: no length filter)."""
    cfg = cfg_with(**{"clean.max_tokens": 10_000})
    splits, _ = clean_02(data.load(cfg).rows, cfg, models.load_tokenizer(cfg))
    return splits


def test_wordnet_offline_from_the_lf_copy():
    assert textops.wordnet_folder().is_relative_to(textops.paths.CACHE / "nltk_data")
    assert b"\r\n" not in (textops.wordnet_folder() / "index.noun").read_bytes()[:100_000]
    assert "glad" in textops.synonyms("happy") and "uncivil" in textops.synonyms("rude")
    assert textops.synonyms("delayed") == ()  # only senses listing this exact form: no "detain" for "delayed"
    assert textops.synonyms("xqzv") == ()


@pytest.mark.parametrize("op", sorted(textops.TEXT_OPS))
def test_each_op_changes_the_text_keeps_protected_tokens_and_is_seeded(op):
    out = textops.TEXT_OPS[op](TEXT, Random(1), 0.1)
    assert out != TEXT and "<EMAIL>" in out
    if op not in ("case",):
        assert "@united" in out
    assert textops.TEXT_OPS[op](TEXT, Random(1), 0.1) == out


def test_ops_leave_protected_tokens_alone():
    assert textops.synonym("@united <EMAIL> 1234 https://t.co/x", Random(0), 1.0) == "@united <EMAIL> 1234 https://t.co/x"
    assert textops.swap("one", Random(0), 0.5) == "one"  # nothing to swap with
    assert textops.delete("word", Random(0), 0.9) == "word"  # never delete every word


def test_typo_hits_a_neighbouring_key_at_most():
    out = textops.typo("keyboard", Random(3), 1.0)
    assert out != "keyboard" and abs(len(out) - len("keyboard")) <= 1


def test_augment_rows_counts_ids_and_user_turns_only(support):
    cfg = cfg_with(**{"augment.ratio": 0.5, "augment.ops": ["synonym", "swap", "delete", "insert", "typo",
                                                             "case", "punct", "persona", "multiturn"]})
    train = support["train"]
    before = copy.deepcopy(train)
    result = augment.augment_rows(train, cfg)
    assert train == before  # inputs untouched
    assert len(result.rows) + sum(result.skipped.values()) == round(0.5 * len(train))
    assert len(result.rows) == 14 and not result.skipped
    augment.verify(result.rows, train)
    by_id = {r["id"]: r for r in train}
    assert len({r["id"] for r in result.rows} | set(by_id)) == len(result.rows) + len(train)
    for new in result.rows:
        old = by_id[new["augment_of"]]
        assert new["id"].startswith(f"{old['id']}~{new['augment_op']}")
        if new["augment_op"] == "multiturn":
            assert new["messages"][:len(old["messages"])] == old["messages"]
            assert len(new["messages"]) > len(old["messages"])
            continue
        assert len(new["messages"]) == len(old["messages"])
        changed = [o["role"] for o, n in zip(old["messages"], new["messages"]) if o != n]
        assert changed == ["user"]


def test_never_touches_validation_or_test(support):
    cfg = cfg_with(**{"augment.ratio": 1.0})
    result = augment.augment_rows(support["train"], cfg)
    held_out = {r["id"] for r in support["validation"] + support["test"]}
    assert held_out and not {r["augment_of"] for r in result.rows} & held_out
    assert {r["augment_of"] for r in result.rows} <= {r["id"] for r in support["train"]}


def test_same_seed_same_rows_other_seed_other_rows(support):
    a = augment.augment_rows(support["train"], cfg_with(**{"augment.ratio": 1.0})).rows
    b = augment.augment_rows(support["train"], cfg_with(**{"augment.ratio": 1.0})).rows
    c = augment.augment_rows(support["train"], cfg_with(**{"augment.ratio": 1.0, "experiment.seed": 7})).rows
    assert a == b and a != c


def test_too_long_chats_are_not_made(support):
    cfg = cfg_with(**{"augment.ratio": 0.5, "augment.ops": ["multiturn"], "model.max_length": 192})
    tok = models.load_tokenizer(cfg)
    result = augment.augment_rows(support["train"], cfg, tok)
    for r in result.rows:
        assert not augment.chat.encode(tok, r["messages"], 192).truncated
    assert len(result.rows) + result.skipped["multiturn"] == round(0.5 * len(support["train"]))


def test_classification_keeps_labels(fixtures):
    cfg = config.load_config(overrides={"experiment.task": "classification", "data.source": str(fixtures / "labels.csv"),
                                        "augment.ratio": 1.0, "augment.ops": ["synonym", "typo", "punct"]})
    train = data.load(cfg).rows
    result = augment.augment_rows(train, cfg)
    assert len(result.rows) == 12
    augment.verify(result.rows, train)
    assert {r["augment_op"] for r in result.rows} == {"synonym", "typo", "punct"}


def test_combined_tags_the_originals():
    train = [{"id": "a", "source": "a", "text": "hi there", "label": "x"}]
    new = [{"id": "a~typo1", "source": "a", "text": "hi tjere", "label": "x", "augment_op": "typo", "augment_of": "a"}]
    assert augment.combined(train, new) == [{**train[0], "augment_op": "", "augment_of": ""}] + new


def test_verify_catches_a_changed_answer(support):
    row = support["train"][0]
    bad = copy.deepcopy(row) | {"id": "x", "augment_op": "typo", "augment_of": row["id"]}
    bad["messages"][-1]["content"] += " (edited)"
    with pytest.raises(AssertionError, match="an assistant turn changed"):
        augment.verify([bad], support["train"])


def test_bad_ops_are_clear_errors():
    # A typo is refused by the config, naming the key, before any stage runs.
    with pytest.raises(ConfigError, match="augment\\.ops\\.1: Input should be 'synonym', .* \\(got 'synonyms'\\)"):
        cfg_with(**{"augment.ops": ["typo", "synonyms"]})
    with pytest.raises(ConfigError, match="for chat only"):
        augment.check_ops(config.load_config(overrides={"experiment.task": "classification",
                                                        "augment.ops": ["persona"]}))


def test_disabled_makes_nothing(support):
    assert augment.augment_rows(support["train"], cfg_with(**{"augment.enabled": False})).rows == []


def test_pairs_and_summary(support):
    cfg = cfg_with()
    result = augment.augment_rows(support["train"], cfg)
    pairs = augment.pairs_table(result.rows, support["train"], 1)
    assert sorted(pairs["op"]) == sorted(cfg.augment.ops) and (pairs["before"] != pairs["after"]).all()
    s = augment.summary(support["train"], result, cfg)
    assert s["new_rows"] == round(0.3 * len(support["train"])) and sum(s["by_op"].values()) == s["new_rows"]


def test_demo_shows_each_text_op_on_a_long_enough_text(support):
    table = augment.demo(support["train"], cfg_with(**{"augment.ops": ["synonym", "typo", "multiturn"]}))
    assert table["op"].tolist() == ["(original)", "synonym", "typo"]  # multiturn needs two chats: not shown
    assert len(table["text"][0].split()) >= 8 and table["text"][1] != table["text"][0]


def test_paraphrases_that_drift_away_are_rejected(support):
    cfg = cfg_with(**{"augment.ratio": 0.25, "augment.ops": ["paraphrase"]})
    good = augment.augment_rows(support["train"], cfg, paraphraser=lambda t: "Quick question: " + t.lower()).rows
    assert len(good) == 7 and all(r["augment_op"] == "paraphrase" for r in good)
    augment.verify(good, support["train"])
    drifted = augment.augment_rows(support["train"], cfg, paraphraser=lambda t: "Die Antwort ist wichtig.")
    assert drifted.rows == [] and drifted.skipped == {"paraphrase": 7}


def test_op_names_are_one_list():
    # sections.AugmentOp is the list; augment implements each name, and evaluate's robustness ops reuse them.
    assert augment.OPS == list(get_args(sections.AugmentOp))
    assert set(augment.OPS) == set(textops.TEXT_OPS) | {"multiturn", "paraphrase"}
    assert set(textops.WORD_OPS) <= set(augment.OPS) and augment.CHAT_ONLY <= set(augment.OPS)
    robustness = get_args(get_args(sections.EvaluateParams.model_fields["robustness_ops"].annotation)[0])
    assert set(robustness) <= set(textops.TEXT_OPS)
