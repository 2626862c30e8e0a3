"""Assistant-only loss masks under the real SmolLM2 chat template."""
import pytest

from helpers import chat, models
from helpers.config import load_config


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(load_config())


def test_only_assistant_answers_carry_loss(tok):
    msgs = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Ping?"},
            {"role": "assistant", "content": "Pong."}, {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Pong again."}]
    enc = chat.encode(tok, msgs, 512)
    shown = chat.show_mask(tok, enc)
    assert shown.count("[[") == 2
    assert "[[Pong.<|im_end|>" in shown and "[[Pong again.<|im_end|>" in shown
    loss_text = tok.decode([t for t in enc.labels if t != chat.IGNORE])
    assert "Ping" not in loss_text and "Sys" not in loss_text and "Again" not in loss_text
    assert not enc.truncated


def test_truncation_cuts_and_flags(tok):
    msgs = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    enc = chat.encode(tok, msgs, 32)
    assert enc.truncated and len(enc.input_ids) == 32 and enc.n_loss_tokens == 0


def test_prompt_ids_end_with_generation_prompt(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tok.decode(chat.prompt_ids(tok, msgs))
    assert text.endswith("<|im_start|>assistant\n") and "Hello" not in text


def test_template_less_tokenizer_is_a_clear_error(tok):
    class NoTemplate:
        chat_template = None

    with pytest.raises(chat.ChatTemplateError, match="no chat template"):
        chat.assistant_spans(NoTemplate(), [{"role": "user", "content": "x"}])


def test_last_turn_and_the_prompt_before_it():
    msgs = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Ping?"},
            {"role": "assistant", "content": "Pong."}, {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Pong again."}]
    assert chat.last_turn(msgs, "assistant") == "Pong again." and chat.last_turn(msgs, "user") == "Again?"
    assert chat.last_turn(msgs[:1], "user") == ""
    assert chat.before_last_turn(msgs) == msgs[:4] and chat.before_last_turn(msgs, "user") == msgs[:3]
    assert chat.before_last_turn(msgs[:2]) == msgs[:2]  # no assistant turn: the whole chat is the prompt
