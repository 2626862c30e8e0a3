"""The terminal chat: which model and system prompt, and a real conversation on the smoke model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import chatbot, runs
from helpers.config import ConfigError, load_config

ROOT = Path(__file__).parents[1]


def chat_run_folder(tmp_path, system_messages: list[str | None]):
    """A chat run folder whose train.jsonl has one row per entry (None: a row without a system message)."""
    run = runs.create_run(load_config(ROOT / "params/smoke.yaml"), tmp_path)
    rows = []
    for i, system in enumerate(system_messages):
        msgs = [{"role": "system", "content": system}] if system else []
        rows.append({"id": str(i), "messages": msgs + [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": "a"}]})
    (run.data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_system_prompt_is_the_most_common_one(tmp_path):
    run = chat_run_folder(tmp_path, ["Be brief.", None, "Be kind.", "Be kind.", None, None])
    assert chatbot.system_prompt(run) == "Be kind."  # rows without one do not vote


def test_no_system_prompt_when_training_rows_have_none(tmp_path):
    assert chatbot.system_prompt(chat_run_folder(tmp_path, [None, None])) is None


def test_bad_run_folders_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        chatbot.chat_run(tmp_path)
    run = runs.create_run(load_config(ROOT / "params/smoke-sentiment.yaml"), tmp_path / "r")
    with pytest.raises(ConfigError, match="classification run"):
        chatbot.chat_run(run.dir)
    run = chat_run_folder(tmp_path / "c", [None])
    with pytest.raises(ConfigError, match="04-tune-model"):
        chatbot.model_folder(run)
    assert chatbot.model_id(run, base=True) == run.dir.name + "+base"


@pytest.fixture(scope="session")
def smoke_bot(smoke_chat_run):
    """The smoke run's tuned model loaded in this process."""
    return chatbot.load(smoke_chat_run)


def bot_turns(transcript: str) -> list[str]:
    """The answers in a chat transcript: what follows each "bot> " up to the next "you> " prompt."""
    return [turn[len("bot> "):].strip() for turn in transcript.split("you> ") if turn.startswith("bot> ")]


@pytest.mark.slow
def test_terminal_chat_two_turns_and_reset(smoke_chat_run, smoke_bot):
    script = "How much is the Pro plan?\nCan I pay yearly?\n/reset\nHow much is the Pro plan?\n/quit\nnever read\n"
    proc = subprocess.run([sys.executable, "-m", "helpers.chatbot", str(smoke_chat_run), "--max-new-tokens", "12"],
                          input=script, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert f"Chatting with {smoke_chat_run.name}" in out and smoke_bot.system in out
    before, after = out.split("(conversation reset)")
    answers, (again,) = bot_turns(before), bot_turns(after)
    assert len(answers) == 2 and all(answers)
    # The same greedy answers as in-process generation on the same conversation, history included.
    first = [{"role": "system", "content": smoke_bot.system}, {"role": "user", "content": "How much is the Pro plan?"}]
    assert answers[0] == chatbot.reply(smoke_bot, first, 12).strip()
    second = first + [{"role": "assistant", "content": answers[0]}, {"role": "user", "content": "Can I pay yearly?"}]
    assert answers[1] == chatbot.reply(smoke_bot, second, 12).strip()
    assert again == answers[0]  # after /reset the history is gone: the first question gets the first answer
    assert "never read" not in out  # /quit ended the chat


@pytest.mark.slow
def test_terminal_chat_ends_cleanly_at_end_of_input(smoke_chat_run):
    proc = subprocess.run([sys.executable, "-m", "helpers.chatbot", str(smoke_chat_run), "--base",
                           "--max-new-tokens", "4"], input="", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and f"Chatting with {smoke_chat_run.name}+base" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def tiny_bot():
    """A random one-layer Llama with SmolLM2's tokenizer and template: real shapes, milliseconds per token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import models

    tok = models.load_tokenizer(load_config())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=None, pad_token_id=tok.pad_token_id)
    return chatbot.Bot("tiny", LlamaForCausalLM(cfg).eval(), tok, "Be brief.")


def test_streamed_pieces_join_to_the_whole_greedy_reply(tiny_bot):
    messages = chatbot.new_conversation(tiny_bot) + [{"role": "user", "content": "hello"}]
    pieces = list(chatbot.stream_reply(tiny_bot, messages, 20))
    assert len(pieces) > 1 and "".join(pieces) == chatbot.reply(tiny_bot, messages, 20)


def test_closing_the_stream_stops_generation(tiny_bot):
    steps = []
    hook = tiny_bot.model.register_forward_hook(lambda *args: steps.append(1))
    try:
        stream = chatbot.stream_reply(tiny_bot, [{"role": "user", "content": "hello"}], 4000)  # no end-of-turn
        next(stream)
        stream.close()  # returns once the generating thread has ended
        stopped_at = len(steps)
    finally:
        hook.remove()
    assert 1 <= stopped_at < 200  # far from the 4000 tokens it was allowed
