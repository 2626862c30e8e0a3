"""Exploration: counts, warnings, token lengths under the chat template, words, topics, duplicates, noise."""
import pandas as pd
import pytest

from helpers import chat, config, data, explore, measures, models, runs, schema, words


@pytest.fixture(scope="module")
def chat_cfg():
    return config.load_config(overrides={"experiment.task": "chat", "model.max_length": 64})


@pytest.fixture(scope="module")
def tok(chat_cfg):
    return models.load_tokenizer(chat_cfg)


def chat_row(i, user, answer, topic=""):
    return {"id": f"c:{i}", "source": f"c:{i}", "topic": topic,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_summary_counts_set_aside_rows_per_rule(fixtures):
    cfg = config.load_config(overrides={"data.source": str(fixtures / "chat_bad.jsonl")})
    loaded = data.load(cfg)
    assert explore.summary(loaded, cfg) == {"task": "chat", "source": str(fixtures / "chat_bad.jsonl"), "rows": 2,
                                            "set_aside": 6, "set_aside_by_rule": {"json": 1, "schema": 5},
                                            "filtered": 0, "filtered_by_reason": {}}
    table = explore.problems_table(loaded.problems)
    assert list(table.columns) == ["source", "rule", "reason"]
    assert table.iloc[3].tolist() == ["chat_bad.jsonl:5", "schema", "message 1 (assistant) has empty content"]


def test_summary_counts_rows_left_out_on_purpose(fixtures):
    cfg = config.load_config(overrides={"data.source": str(fixtures / "chat_bad.jsonl"), "data.max_examples": 1})
    got = explore.summary(data.load(cfg), cfg)
    assert (got["rows"], got["set_aside"], got["filtered"]) == (1, 6, 1)
    assert got["filtered_by_reason"] == {"left out by the data.max_examples=1 subsample": 1}


def test_row_warnings_name_each_finding():
    rows = [chat_row(0, "caf\ufffd?", "Yes."), chat_row(1, "I", "n"), chat_row(2, "Same?", "same?"),
            {"id": "c:3", "source": "c:3", "topic": "", "messages": [
                {"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "Hi!"}]}]
    found = explore.row_warnings(rows, "chat")
    assert found[["source", "check"]].values.tolist() == [
        ["c:0", "replacement_char"], ["c:1", "tiny_turn"], ["c:2", "echo"], ["c:3", "same_role_twice"]]
    labels = [{"id": str(i), "source": str(i), "text": "t", "label": l} for i, l in enumerate(["positive", "Positive"])]
    assert explore.row_warnings(labels, "classification")["check"].tolist() == ["label_variant", "label_variant"]
    assert explore.warning_metrics(found) == {"warnings": {"replacement_char": 1, "tiny_turn": 1, "echo": 1,
                                                           "same_role_twice": 1}}


def test_token_lengths_use_the_chat_template_and_count_loss_tokens(tok):
    rows = [chat_row(0, "Hi", "Hello!"), chat_row(1, "Tell me a story. " * 10, "Once upon a time.")]
    lengths = explore.token_lengths(rows, tok, "chat")
    enc = [chat.encode(tok, r["messages"], 10_000) for r in rows]
    assert lengths["tokens"].tolist() == [len(e.input_ids) for e in enc]
    assert lengths["loss_tokens"].tolist() == [e.n_loss_tokens for e in enc]
    stats = explore.length_stats(lengths, 64)
    assert stats["over_max_length"] == 1 and stats["over_max_length_share"] == 0.5
    assert stats["tokens_max"] == len(enc[1].input_ids)


def test_epoch_tokens_cap_at_max_length_and_scale_by_train_share():
    cfg = config.load_config(overrides={"model.max_length": 100, "tune.batch_size": 2,
                                        "data.split": {"validation": 0.1, "test": 0.1}})
    lengths = pd.DataFrame({"tokens": [50, 150, 100, 20, 80] * 2, "loss_tokens": [10] * 10})
    assert explore.epoch_tokens(lengths, cfg) == {"train_rows_estimate": 8, "validation_rows_estimate": 1,
                                                  "tokens_per_epoch": 560, "steps_per_epoch": 4,
                                                  "loss_tokens_per_epoch": 80}


def test_render_example_brackets_the_answer_and_fails_on_an_empty_mask(tok):
    row = chat_row(0, "Capital of France?", "Paris.")
    shown = explore.render_example(tok, row, 64, "chat")
    assert "[[Paris." in shown and "Capital of France?" in shown.split("[[")[0]
    with pytest.raises(ValueError, match="no token carries the loss"):
        explore.render_example(tok, chat_row(1, "word " * 100, "Paris."), 64, "chat")


def test_pick_example_prefers_one_that_fits():
    rows = [chat_row(0, "a", "b"), chat_row(1, "c", "d")]
    assert explore.pick_example(rows, pd.DataFrame({"tokens": [90, 30]}), 64) is rows[1]


def test_ngrams_drop_stop_words_keep_negations_and_handles():
    texts = ["@united the flight was not on time", "The flight was late, not good", "late flight again"]
    uni = words.top_ngrams(texts, 1, 3)
    assert uni.values.tolist() == [["flight", 3], ["late", 2], ["not", 2]]  # ties alphabetical
    assert words.words_text({"text": "@united see https://t.co/x &amp; mail a@b.com"}).split() == ["see", "&", "mail"]
    bi = words.top_ngrams(texts, 2, 1)
    assert bi.values.tolist() == [["flight late", 1]]  # pairs form after stop words are gone


def test_group_views_by_label():
    rows = [{"id": str(i), "source": str(i), "text": t, "label": l} for i, (t, l) in enumerate(
        [("late flight again", "neg"), ("late bags", "neg"), ("great crew", "pos")])]
    assert schema.group_key(rows) == "label" and explore.top_groups(rows, 1) == ["neg"]
    sizes = explore.group_sizes(rows, "label")
    assert sizes.values.tolist() == [["neg", 2, 0.667], ["pos", 1, 0.333]]
    assert explore.group_metrics(sizes, "label") == {"rows_per_label": {"neg": 2, "pos": 1}}
    freqs = words.frequencies_by_group(rows, ["neg", "pos"])
    assert freqs["label: neg"] == {"late": 2, "flight": 1, "bags": 1} and freqs["label: pos"] == {"great": 1, "crew": 1}
    assert words.ngrams_by_group(rows, ["neg"], 1, 2)["neg"].tolist() == ["late (2)", "bags (1)"]


def test_topics_separate_clear_themes():
    texts = (["refund my payment charge"] * 4 + ["password login account reset"] * 4
             + ["parcel tracking shipping late"] * 4 + ["the and of"])  # the last: stop words only, no topic
    table, assigned = words.topics(texts, 3, 3, seed=0)
    assert table["rows"].tolist() == [4, 4, 4, 1] and table["topic"].tolist() == [0, 1, 2, -1]
    assert [len(set(assigned[i:i + 4])) for i in (0, 4, 8)] == [1, 1, 1] and len(set(assigned)) == 4
    refund = table.set_index("topic")["top_words"][assigned[0]]
    assert set(refund.split(", ")) == {"refund", "payment", "charge"}
    got = words.topic_metrics(table)["nmf_topics"]
    assert got[refund] == 4 and sorted(got.values()) == [1, 4, 4, 4]


def test_near_duplicates_pairs_skip_exact_copies():
    rows = [chat_row(0, "Thank you so much!", "You're welcome."), chat_row(1, "thank you so much.", "You're welcome."),
            chat_row(2, "Thank you so much!", "You're welcome."), chat_row(3, "Where is my bag?", "At the desk.")]
    assert explore.exact_duplicates(rows) == 1
    pairs = explore.near_duplicates(rows, 0.6, seed=0)
    assert pairs[["source_a", "source_b"]].values.tolist() == [["c:0", "c:1"]]
    assert pairs["similarity"][0] == 0.714
    outliers = pd.DataFrame({"source": ["c:3"]})
    assert explore.duplicate_metrics(rows, pairs, outliers) == {"exact_duplicates": 1, "near_duplicate_pairs": 1,
                                                                "length_outliers": 1}


def test_length_outliers_outside_tukey_fences():
    rows = [{"id": str(i), "source": str(i), "text": "x", "label": "a"} for i in range(8)]
    lengths = pd.DataFrame({"tokens": [10, 11, 12, 10, 11, 12, 11, 80]})
    out = explore.length_outliers(rows, lengths, 1.5)
    assert out["source"].tolist() == ["7"] and out["fences"][0] == "[9, 14]"  # Q1 10.75, Q3 12


def test_noise_indicator_shares():
    rows = [{"id": str(i), "source": str(i), "text": t, "label": "a"} for i, t in enumerate([
        "see https://t.co/x", "<b>bold</b> &amp; call 555-123-4567", "caf\u00c3\u00a9 at @jetblue", "plain text"])]
    noise = explore.noise_indicators(rows, 1).set_index("indicator")
    assert noise["rows"].to_dict() == {"url": 1, "html_tag": 1, "html_entity": 1, "email": 0, "phone": 1,
                                       "@handle": 1, "non_ascii": 1, "control_chars": 0, "mojibake": 1}
    assert noise.loc["url", "share"] == 0.25 and noise.loc["url", "examples"] == "see https://t.co/x"
    assert noise.loc["phone", "examples"] == "<b>bold</b> &amp; call 555-123-4567"
    shares = explore.noise_metrics(noise.reset_index())["noise"]
    assert shares["url"] == 0.25 and shares["email"] == 0.0 and len(shares) == 9


def test_chat_metrics():
    roles = pd.DataFrame([{"role": "user", "turns": 3, "tokens": 12, "tokens_per_turn": 4.0}])
    turns = pd.DataFrame({"user_turns": [1, 2], "chats": [1, 1]})
    assert explore.chat_metrics(roles, turns) == {
        "roles": {"user": {"turns": 3, "tokens": 12, "tokens_per_turn": 4.0}}, "user_turns": {"1": 1, "2": 1}}


def test_figures_build():
    lengths = pd.DataFrame({"tokens": [10, 20, 30, 40]})
    assert explore.length_histogram(lengths, 32, "t").axes[0].get_title() == "t"
    fig = words.wordcloud_figure({"all rows": {"late": 3, "flight": 2}, "label: neg": {"late": 1}, "empty": {}}, 10, 0)
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["all rows", "label: neg"]


def test_auto_max_length_covers_p99_rounded_and_capped():
    assert measures.auto_max_length([10] * 199 + [500], context=8192, cap=1024) == 16  # one outlier of 200 left over
    assert measures.auto_max_length([57] * 10, 8192, 1024) == 64 and measures.auto_max_length([64] * 3, 8192, 1024) == 64
    assert measures.auto_max_length([3000] * 5, 8192, 1024) == 1024  # the memory cap
    assert measures.auto_max_length([3000] * 5, 512, 1024) == 512  # the model's context
    assert measures.auto_max_length([3000] * 5, None, 1024) == 1024  # a model that does not say


def test_choose_max_length_reports_what_is_left_over(chat_cfg):
    lengths = pd.DataFrame({"tokens": [100] * 97 + [300, 400, 420]})
    auto = explore.choose_max_length(lengths, config.load_config(), 8192, "cpu")
    assert {k: auto[k] for k in ("max_length", "setting", "over", "over_fixed_256", "memory_cap")} == {
        "max_length": 400, "setting": "auto", "over": 1, "over_fixed_256": 3, "memory_cap": 1024}
    fixed = explore.choose_max_length(lengths, chat_cfg, 8192, "cpu")  # a number in the params is used as given
    assert (fixed["max_length"], fixed["setting"], fixed["over"]) == (64, "params", 100)


def test_resolve_max_length_writes_the_number_into_the_runs_config(tmp_path, fixtures):
    cfg = config.load_config(overrides={"data.source": str(fixtures / "chat_bad.jsonl")})
    run = runs.create_run(cfg, tmp_path)
    lengths = pd.DataFrame({"tokens": [30, 41, 50]})
    resolved, choice = explore.resolve_max_length(run, cfg, lengths)
    assert resolved.model.max_length == choice["max_length"] == 56 and choice["model_context"] == 8192
    assert run.config().model.max_length == 56 and run.config().tune == cfg.tune
    assert runs.read_json(run.metrics_file)["explore"]["max_length_choice"]["max_length"] == 56
