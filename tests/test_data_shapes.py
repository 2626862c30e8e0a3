"""End to end on the shapes of data users bring: all six notebooks through Papermill, tiny runs.

Each file is made here from the bundled data, the way a user's file would look: chats without
a topic (none of the chat files carries one), without a system prompt, only single-turn or only
multi-turn; labelled texts with two classes, with one class holding 90% of the rows, and with ten
classes. Every run must end with a report that holds its headline figures. (The bundled support
chats as they are, topics and all, are the smoke run's: tests/test_pipeline_e2e.py.)
"""
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from helpers import data, pipeline, report
from helpers.config import Config

pytestmark = pytest.mark.slow

# As small as a real run can be: a few optimizer steps, one evaluation, one generated answer.
FAST = """
explore: {measure_speed: false, topics: 2, wordcloud_words: 30}
augment: {ratio: 0.2}
tune: {max_steps: 2, batch_size: 8, eval_steps: 2, save_steps: 2, logging_steps: 1, warmup_ratio: 0.0,
       sample_prompts: 0}
evaluate: {bootstrap_resamples: 50, show_examples: 2}
"""
# Two chats a step: the shape of the data is under test, not the learning (a CPU's time goes to tokens).
CHAT = FAST + """
model: {max_length: 256}
tune: {max_steps: 2, batch_size: 2, eval_steps: 2, save_steps: 2, logging_steps: 1, warmup_ratio: 0.0,
       sample_prompts: 0}
evaluate: {generate_examples: 1, max_new_tokens: 8, robustness_ops: [], bootstrap_resamples: 50, show_examples: 2}
"""
LABELS = FAST + """
model: {max_length: 64}
tune: {max_steps: 2, batch_size: 16, eval_steps: 2, save_steps: 2, logging_steps: 1, warmup_ratio: 0.0,
       learning_rate: 1.0e-3}
"""


def support_chats() -> list[list[dict]]:
    """The bundled support chats' messages (40 chats, most with a system prompt and a topic)."""
    path = Path(__file__).parents[1] / "data" / "support-chats.jsonl"
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def exchanges(messages: list[dict]) -> list[list[dict]]:
    """A chat's user -> assistant exchanges (system prompt left out)."""
    turns = [m for m in messages if m["role"] != "system"]
    return [turns[i:i + 2] for i in range(0, len(turns) - 1, 2)]


def system_of(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["role"] == "system"][:1]


def chat_file(shape: str) -> list[dict]:
    """OpenAI-format rows of one shape, with no `topic` field (as most chat files have none)."""
    chats = support_chats()
    if shape == "no-system":
        rows = [[m for m in c if m["role"] != "system"] for c in chats]
    elif shape == "single-turn":
        rows = [system_of(c) + exchanges(c)[0] for c in chats]
    else:  # multi-turn only: the multi-turn chats, plus pairs of single-turn ones joined
        multi = [c for c in chats if len(exchanges(c)) > 1]
        single = [c for c in chats if len(exchanges(c)) == 1]
        joined = [system_of(a) + exchanges(a)[0] + exchanges(b)[0] for a, b in zip(single[::2], single[1::2])]
        rows = multi + joined
    return [{"messages": m} for m in rows]


def label_file(shape: str) -> list[dict]:
    """text/label rows of one shape, from the bundled tweets (or chatterbot topics for ten classes)."""
    rng = random.Random(0)
    if shape == "ten-classes":
        cfg = Config.model_validate({"experiment": {"task": "chat"}})
        by_topic: dict[str, list[str]] = {}
        for r in data.load_chatterbot(cfg).rows:
            by_topic.setdefault(r["topic"], []).append(r["messages"][-1]["content"])
        biggest = sorted(by_topic, key=lambda t: -len(set(by_topic[t])))[:10]
        return [{"text": t, "label": topic} for topic in biggest for t in sorted(set(by_topic[topic]))[:20]]
    tweets = data.load_airline(Config.model_validate({"experiment": {"task": "classification"}})).rows
    neg = [r["text"] for r in tweets if r["label"] == "negative"]
    pos = [r["text"] for r in tweets if r["label"] == "positive"]
    rng.shuffle(neg), rng.shuffle(pos)
    if shape == "two-classes":
        texts = [(t, "negative") for t in neg[:100]] + [(t, "positive") for t in pos[:100]]
    else:  # one class holds 90% of the rows
        texts = [(t, "negative") for t in neg[:180]] + [(t, "positive") for t in pos[:20]]
    return [{"text": t, "label": label} for t, label in texts]


def run(tmp_path, monkeypatch, name: str, task: str, rows: list[dict], settings: str) -> tuple[Path, dict]:
    """Write the rows and a minimal params file (name, task, source); run all six notebooks."""
    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    params = tmp_path / f"{name}.yaml"
    params.write_text(f"experiment: {{name: {name}, task: {task}}}\ndata: {{source: {source}}}\n" + settings,
                      encoding="utf-8")
    reports = tmp_path / "reports"
    monkeypatch.setenv("TUNEBOOK_REPORTS", str(reports))
    monkeypatch.setattr(pipeline.paths, "REPORTS", reports)
    assert pipeline.main(["--params", str(params)]) == 0
    (folder,) = [p for p in reports.iterdir() if p.is_dir()]
    return folder, json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("shape", ["no-system", "single-turn", "multi-turn"])
def test_chat_shapes_end_with_a_report(shape, tmp_path, monkeypatch):
    rows = chat_file(shape)
    assert not any("topic" in r for r in rows)
    turns = Counter(len(exchanges(r["messages"])) for r in rows)
    assert (shape != "single-turn" or set(turns) == {1}) and (shape != "multi-turn" or 1 not in turns)
    assert shape != "no-system" or not any(m["role"] == "system" for r in rows for m in r["messages"])
    folder, metrics = run(tmp_path, monkeypatch, shape, "chat", rows, CHAT)
    clean, ev = metrics["clean"], metrics["evaluate"]
    assert metrics["explore"]["rows"] + metrics["explore"]["set_aside"] == len(rows)
    assert clean["input"] == clean["kept"] + sum(clean["dropped"].values())
    assert math.isfinite(ev["perplexity_base"]) and math.isfinite(ev["perplexity_tuned"]) and ev["tokens"] > 0
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "perplexity base → tuned" in html
    for key in ("perplexity_base", "perplexity_tuned"):  # the headline shows the measured figures
        assert report.fmt(ev[key], 2) in html, key
    # No chat here carries a topic: the per-group table is empty, and the report says why.
    assert "No groups: the rows carry no topic or label" in html


@pytest.mark.parametrize("shape", ["two-classes", "one-class-90pct", "ten-classes"])
def test_label_shapes_end_with_a_report(shape, tmp_path, monkeypatch):
    rows = label_file(shape)
    counts = Counter(r["label"] for r in rows)
    expected_classes = {"two-classes": 2, "one-class-90pct": 2, "ten-classes": 10}[shape]
    assert len(counts) == expected_classes
    assert shape != "one-class-90pct" or max(counts.values()) / len(rows) == 0.9
    folder, metrics = run(tmp_path, monkeypatch, shape, "classification", rows, LABELS)
    ev = metrics["evaluate"]
    predictions = [json.loads(line) for line in (folder / "data" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == ev["examples"] > 0
    assert abs(ev["accuracy"] - sum(p["predicted"] == p["label"] for p in predictions) / len(predictions)) < 1e-9
    # Each probability is stored rounded to 4 decimals: the sum may be off by half a unit per class.
    assert all(abs(sum(p["probs"].values()) - 1) <= 5e-5 * expected_classes + 1e-9 for p in predictions)
    assert len(predictions[0]["probs"]) == expected_classes
    html = (folder / "report.html").read_text(encoding="utf-8")
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
        assert label in html and report.fmt(ev[key]) in html, key
