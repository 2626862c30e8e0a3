"""A browser chat page on a run's chat model: Gradio's ChatInterface, answers streamed as they come.

    python -m helpers.webchat reports/<run> [--base] [--port 0] [--host 127.0.0.1]   (make chat-ui RUN=...)

The same model, template and training system prompt as the terminal chat (helpers.chatbot).
It binds 127.0.0.1 on a free port unless told otherwise, makes no share link, and sends
nothing anywhere: Gradio's analytics and version check are off (GRADIO_ANALYTICS_ENABLED).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator

from . import chatbot
from .serving import free_port
from .config import ConfigError

# Before gradio is imported anywhere: no telemetry, no version check against its servers.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("GRADIO_SSR_MODE", "False")  # server-side rendering would need Node


def _text(content) -> str:
    """A chat message's text, whether Gradio sends a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "".join(_text(c) for c in content or [])


def conversation(bot: chatbot.Bot, message: str, history: list[dict]) -> list[dict]:
    """The messages the model sees: the system prompt, the page's history, the new message."""
    turns = [{"role": h["role"], "content": _text(h["content"])} for h in history
             if h.get("role") in ("user", "assistant")]
    return chatbot.new_conversation(bot) + turns + [{"role": "user", "content": message}]


def responder(bot: chatbot.Bot, max_new_tokens: int) -> Callable[[str, list[dict]], Iterator[str]]:
    """ChatInterface's function: yields the answer so far after each new piece (Gradio streams it)."""

    def respond(message: str, history: list[dict]) -> Iterator[str]:
        text = ""
        for piece in chatbot.stream_reply(bot, conversation(bot, message, history), max_new_tokens):
            text += piece
            yield text

    return respond


def build(bot: chatbot.Bot, max_new_tokens: int = 256):
    """The Gradio app: one ChatInterface on the bot."""
    import gradio as gr

    note = f"System prompt from the training data: *{bot.system}*" if bot.system else "No system prompt (the training data had none)."
    return gr.ChatInterface(responder(bot, max_new_tokens), title=f"Chat with {bot.name}", description=note,
                            analytics_enabled=False, flagging_mode="never")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the model, serve the page until Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m helpers.webchat", description=__doc__.split("\n")[0])
    p.add_argument("run", help="the run folder, e.g. reports/smoke-20260101-120000")
    p.add_argument("--base", action="store_true", help="chat with the run's base model instead of the tuned one")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the page to the network)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    a = p.parse_args(argv)
    try:
        bot = chatbot.load(a.run, a.base)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    port = a.port or free_port(a.host)
    print(f"chat page for {bot.name}: http://{a.host}:{port}/", flush=True)
    build(bot, a.max_new_tokens).launch(server_name=a.host, server_port=port, share=False, inbrowser=False,
                                        ssr_mode=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
