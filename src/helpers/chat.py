"""Chat examples as token ids with loss on the assistant's tokens only, via the model's template.

Most chat templates (SmolLM2's included) have no `{% generation %}` markers, so
`return_assistant_tokens_mask` cannot be used. Instead each assistant turn's character span
is found by rendering the conversation up to that turn, and the tokens inside the spans
carry the loss. The span covers the answer and the template's end-of-turn token, so the
model learns to stop.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100  # label value the loss skips (transformers' convention)


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to build an assistant loss mask."""


@dataclass
class Encoded:
    """One tokenized conversation."""

    input_ids: list[int]
    labels: list[int]  # IGNORE outside assistant turns
    truncated: bool  # longer than max_length before cutting

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character spans of the assistant turns that carry the loss."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template; use an instruct/chat model or set one on the tokenizer")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        # weight 0: an answer shown as context only (an earlier turn in a window of a long chat,
        # measures.chat_windows), trained on in the window where it is a target.
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(before) or not text.startswith(upto) or len(upto) <= len(before):
            raise ChatTemplateError(
                "the chat template renders a conversation's prefix differently from the whole "
                "conversation, so the assistant tokens cannot be located; pick another model or template")
        spans.append((len(before), len(upto)))
    return text, spans


def encode(tokenizer, messages: list[dict], max_length: int) -> Encoded:
    """Token ids and labels (assistant tokens only) of one conversation, cut at max_length."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    s = 0
    for i, (start, _end) in enumerate(offsets):
        while s < len(spans) and start >= spans[s][1]:
            s += 1
        if s < len(spans) and spans[s][0] <= start < spans[s][1]:
            labels[i] = ids[i]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation up to its last assistant turn, ready for generation."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.apply_chat_template(messages[:last], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]


def system_prompt(rows: list[dict]) -> str | None:
    """The most common system message of chat rows (the one the model was tuned with), or None."""
    import collections

    counts = collections.Counter(r["messages"][0]["content"] for r in rows
                                 if r.get("messages") and r["messages"][0]["role"] == "system")
    return counts.most_common(1)[0][0] if counts else None


def show_mask(tokenizer, encoded: Encoded) -> str:
    """The example's text with loss-carrying tokens wrapped in [[...]], for a reader to check."""
    out, inside = [], False
    for tid, lab in zip(encoded.input_ids, encoded.labels):
        piece = tokenizer.decode([tid])
        if (lab != IGNORE) != inside:
            out.append("[[" if not inside else "]]")
            inside = not inside
        out.append(piece)
    if inside:
        out.append("]]")
    return "".join(out)


def last_turn(messages: list[dict], role: str) -> str:
    """Content of the conversation's last message with this role ("" when there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == role), "")


def answered_prompt(messages: list[dict]) -> str:
    """The message the last assistant turn answers (what a reader of sampled answers needs)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[last - 1]["content"] if last else ""


def before_last_turn(messages: list[dict], role: str = "assistant") -> list[dict]:
    """The messages before the last one with this role (all of them when none has it): the prompt
    that turn answers, as generation and serving send it."""
    last = max((i for i, m in enumerate(messages) if m["role"] == role), default=len(messages))
    return messages[:last]
