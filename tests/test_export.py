"""make export (GGUF, Modelfile, the export's own check) and make predict, on real smoke models."""
import copy
import json
import os
import re

import pytest

from helpers import chat, data, export, modelfile, models, predict, readers, schema
from helpers.config import load_config

SUPPORT_SYSTEM = json.loads(open("data/support-chats.jsonl", encoding="utf-8").readline())["messages"][0]["content"]


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(load_config())


def chats():
    sys_msg = {"role": "system", "content": "Be brief."}
    turn = [{"role": "user", "content": "Hi <there> & \"you\""}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again?"}]
    return [turn[:1], [sys_msg] + turn]


# ---------------------------------------------------------------- fast: template, Modelfile

def test_chatml_template_becomes_an_ollama_template_that_renders_the_same_text(tok):
    t = modelfile.translate_template(tok)
    assert t.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    text = modelfile.modelfile(t, modelfile.stop_tokens(tok, None), SUPPORT_SYSTEM)
    mf = modelfile.read_modelfile(text)
    assert text.startswith("# Ollama") and "\nFROM ./model.gguf\n" in text
    assert mf["template"] == modelfile.CHATML_GO and mf["stop"] == ["<|im_end|>"] and mf["system"] == SUPPORT_SYSTEM
    for msgs in chats():
        hf = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        # Without a system message of its own, Ollama adds the Modelfile's SYSTEM, as HF adds its default.
        assert modelfile.render_go(mf["template"], msgs, t.default_system) == hf
    assert modelfile.render_go(mf["template"], chats()[0], SUPPORT_SYSTEM).startswith(
        f"<|im_start|>system\n{SUPPORT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi <there>")


def test_a_template_we_cannot_translate_is_a_clear_error(tok):
    llama2 = copy.copy(tok)
    llama2.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                            "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    with pytest.raises(export.ExportError, match=r"not ChatML .*renders a user turn as '\[INST\] Q1"):
        modelfile.translate_template(llama2)


def test_go_constructs_outside_the_translated_ones_are_refused():
    with pytest.raises(export.ExportError, match="cannot render"):
        modelfile.render_go("{{ if .System }}x{{ end }}{{ .Prompt }}", [{"role": "user", "content": "hi"}], None)


def test_system_prompt_is_the_most_common_one():
    rows = [{"messages": [{"role": "system", "content": s}, {"role": "user", "content": "q"}]} for s in "abb"]
    assert chat.system_prompt(rows + [{"messages": [{"role": "user", "content": "q"}]}]) == "b"
    assert chat.system_prompt([{"messages": [{"role": "user", "content": "q"}]}]) is None


def test_unlabelled_classification_files_read_with_stage_01s_reader(tmp_path):
    cfg = load_config("params/smoke-sentiment.yaml")
    path = tmp_path / "new.csv"
    path.write_text('text,other\nfine flight,1\n"",2\nbad crew,3\n', encoding="utf-8")
    out = readers.load_file(path, cfg, labelled=False)
    assert [(r["source"], r["label"]) for r in out.rows] == [("new.csv:2", ""), ("new.csv:4", "")]
    assert [(p["source"], p["reason"]) for p in out.problems] == [("new.csv:3", "empty text")]
    with pytest.raises(schema.DataError, match=r"missing column\(s\) \['label'\]"):  # training still needs labels
        readers.load_file(path, cfg)


# ---------------------------------------------------------------- slow: the smoke models

@pytest.fixture(scope="module")
def exported(smoke_chat_run):
    """The smoke chat run exported once (f16), checked on 2 test prompts."""
    run = export.Run(smoke_chat_run)
    return run, export.export_run(run, "f16", prompts=2, max_new_tokens=96)


@pytest.mark.slow
def test_export_writes_gguf_modelfile_and_a_passing_check(exported):
    run, res = exported
    out = run.dir / "export"
    assert res["passed"], res["failures"]
    assert json.loads((out / "check.json").read_text())["passed"] is True
    assert res["prompts"] == 2 and len(res["results"]) == 2 and res["max_weight_difference"] == 0.0
    for r in res["results"]:
        assert r["gguf_template_same"] and r["modelfile_template_same"] and r["prompt_tokens_same"]
        assert r["same_tokens"] and r["first_different_token"] is None
        assert r["ends_with_end_of_turn"] == r["merged_ends_with_end_of_turn"]
    with open(out / "model.gguf", "rb") as f:
        assert f.read(4) == b"GGUF"
    assert res["gguf_bytes"] == (out / "model.gguf").stat().st_size > 100 * 2**20  # 135M params in f16
    mf = modelfile.read_modelfile((out / "Modelfile").read_text())
    assert mf["system"] == SUPPORT_SYSTEM and "<|im_end|>" in mf["stop"] and "<|im_start|>" in mf["template"]
    assert res["end_of_turn"]["gguf"] == ["<|im_end|>"]
    # The weights are the run's own file (hard link), the small files copies that can be edited safely.
    final = run.model / "final"
    assert os.path.samefile(out / "model.safetensors", final / "model.safetensors")
    assert not os.path.samefile(out / "tokenizer_config.json", final / "tokenizer_config.json")


@pytest.mark.slow
def test_export_check_fails_on_a_broken_template_and_names_the_prompt(exported, capsys):
    """Two classic silent export bugs at once (one check: each check loads the GGUF back, minutes on a CPU):
    Ollama's TEMPLATE loses the newline after the role, and the exported tokenizer's chat template no longer
    matches the GGUF's. The check fails and names the prompt and each difference."""
    run, _ = exported
    out = run.dir / "export"
    files = [p for p in (out / "Modelfile", out / "chat_template.jinja", out / "tokenizer_config.json") if p.is_file()]
    saved = {p: p.read_text() for p in files}
    try:
        (out / "Modelfile").write_text(saved[out / "Modelfile"].replace("{{ .Role }}\n", "{{ .Role }}"))
        # the template only (tokenizer_config.json also defines the special tokens themselves)
        if (out / "chat_template.jinja").is_file():
            (out / "chat_template.jinja").write_text(saved[out / "chat_template.jinja"].replace("<|im_start|>", "<|im_start|> "))
        conf = json.loads(saved[out / "tokenizer_config.json"])
        if "chat_template" in conf:
            conf["chat_template"] = conf["chat_template"].replace("<|im_start|>", "<|im_start|> ")
            (out / "tokenizer_config.json").write_text(json.dumps(conf))
        assert export.main(["--run", str(run.dir), "--check-only", "--prompts", "1", "--max-new-tokens", "8"]) == 1
        err = capsys.readouterr().err
        assert re.search(r"prompt 1 \(\S+:\d+\): the Modelfile's TEMPLATE .* differ at character \d+", err)
        assert "the GGUF's chat template and the merged model's differ" in err
        assert json.loads((out / "check.json").read_text())["passed"] is False
    finally:
        for p, text in saved.items():
            p.write_text(text)


@pytest.mark.slow
def test_export_of_a_classifier_is_the_merged_model_only(smoke_classifier_run, capsys):
    assert export.main(["--run", str(smoke_classifier_run)]) == 0
    out = smoke_classifier_run / "export"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "model.gguf").exists() and "not sequence classifiers" in capsys.readouterr().out
    assert (out / "members" / "1" / "model.safetensors").is_file()  # smoke-sentiment: an ensemble of two


@pytest.mark.slow
def test_predict_labels_good_rows_and_names_the_bad_one(smoke_classifier_run, tmp_path, capsys):
    new = tmp_path / "new.csv"
    new.write_text('text\n"@united thanks, great crew today!"\n""\n"@delta lost my bag, awful"\n', encoding="utf-8")
    assert predict.main(["--run", str(smoke_classifier_run), "--input", str(new)]) == 0
    out = smoke_classifier_run / "predictions-new.csv"
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df["id"]) == ["new.csv:2", "new.csv:4"] and "label" not in df  # unlabelled input
    probs = df[["p(negative)", "p(neutral)", "p(positive)"]]
    assert (probs.sum(axis=1) - 1).abs().max() < 1e-3  # rounded to 4 decimals
    assert list(df["predicted"]) == [c[2:-1] for c in probs.idxmax(axis=1)]
    assert list(df["confidence"]) == list(probs.max(axis=1))
    problems = data.read_jsonl(smoke_classifier_run / "predictions-new.problems.jsonl")
    assert [(p["source"], p["rule"], p["reason"]) for p in problems] == [("new.csv:3", "schema", "empty text")]
    assert "2 rows labelled" in capsys.readouterr().out
    # JSONL in, JSONL out; a broken line named with stage 01's message; a given label is kept.
    new = tmp_path / "more.jsonl"
    new.write_text('{"text": "@jetblue love it", "label": "positive"}\n{"text": broken\n', encoding="utf-8")
    assert predict.main(["--run", str(smoke_classifier_run), "--input", str(new), "--output",
                         str(tmp_path / "out.jsonl")]) == 0
    (row,) = data.read_jsonl(tmp_path / "out.jsonl")
    assert row["label"] == "positive" and abs(sum(row["probs"].values()) - 1) < 1e-3
    (bad,) = data.read_jsonl(tmp_path / "out.problems.jsonl")
    assert bad["source"] == "more.jsonl:2" and bad["reason"].startswith("invalid JSON")


@pytest.mark.slow
def test_predict_on_a_chat_run_says_what_to_use(smoke_chat_run, tmp_path, capsys):
    new = tmp_path / "new.csv"
    new.write_text("text\nhi\n", encoding="utf-8")
    assert predict.main(["--run", str(smoke_chat_run), "--input", str(new)]) == 1
    assert "is a chat run" in capsys.readouterr().err
