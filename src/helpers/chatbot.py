"""Talk to a run's chat model: which model, which system prompt, streamed replies, a terminal chat.

    python -m helpers.chatbot reports/<run> [--base] [--max-new-tokens 256]   (make chat RUN=...)

The tuned model is the run's `model/final/`; `--base` loads the run's base model instead (the
bundled alias or hub id in its config, through helpers.models). Replies are rendered with the
model's own chat template and begin with the system prompt the training data used (the most
common system message in `data/train.jsonl`), so the bot sees what it was tuned on. Tokens are
streamed with transformers' TextIteratorStreamer. Commands: /reset starts over, /quit (or EOF,
Ctrl-C) leaves. The web page (helpers.webchat) and the server (helpers.serving) use the same
model and prompt lookups.
"""
from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import chat, data, models
from .config import ConfigError
from .runs import Run

RESET, QUIT = "/reset", "/quit"


@dataclass
class Bot:
    """A loaded chat model, its tokenizer, and the conversation's opening system prompt."""

    name: str  # what the user is talking to: the run's name, "+base" for the base model
    model: Any
    tokenizer: Any
    system: str | None


def chat_run(run_dir: str | Path) -> Run:
    """The run folder, checked to be a chat run; a clear error otherwise."""
    run = Run(Path(run_dir))
    if not run.config_file.is_file():
        raise ConfigError(f"RUN={run_dir}: not a run folder (no config.yaml); give a folder under reports/, "
                          f"e.g. RUN=reports/smoke-20260101-120000")
    task = run.config().experiment.task
    if task != "chat":
        raise ConfigError(f"RUN={run_dir}: a {task} run; chat and serving need a chat run "
                          f"(label files with a classifier through make predict)")
    return run


def model_folder(run: Run, base: bool = False) -> Path | str:
    """The tuned model's folder (`model/final/`), or the run's base model (a folder or hub id)."""
    if base:
        return models.resolve(models.model_name(run.config()))
    folder = run.model / "final"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} holds no model: the run has not finished 04-tune-model "
                          f"(make pipeline RESUME={run.dir}), or chat with its base model (BASE=1)")
    return folder


def model_id(run: Run, base: bool = False) -> str:
    """The name a model is known by outside: the run's folder name (+base for its base model)."""
    return run.dir.name + ("+base" if base else "")


def system_prompt(run: Run) -> str | None:
    """The most common system message of the training rows, or None when they have none."""
    path = run.data / "train.jsonl"
    return chat.system_prompt(data.read_jsonl(path)) if path.is_file() else None


def load(run_dir: str | Path, base: bool = False) -> Bot:
    """The run's tuned (or base) model in eval mode, its tokenizer and the training system prompt."""
    run = chat_run(run_dir)
    model, tokenizer = models.load_saved(model_folder(run, base), run.config())
    return Bot(model_id(run, base), model, tokenizer, system_prompt(run))


def new_conversation(bot: Bot) -> list[dict]:
    """A fresh message list: the system prompt alone, or nothing."""
    return [{"role": "system", "content": bot.system}] if bot.system else []


def prompt_ids(bot: Bot, messages: list[dict]) -> Any:
    """The conversation rendered by the model's own chat template, ready for the answer. (1, T)"""
    return bot.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"].to(bot.model.device)


def generation_kwargs(bot: Bot, max_new_tokens: int) -> dict[str, Any]:
    """Greedy decoding with the KV cache up to max_new_tokens (what serving's temperature 0 does)."""
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
                top_k=None, use_cache=True, pad_token_id=bot.tokenizer.pad_token_id or bot.tokenizer.eos_token_id)


def stream_reply(bot: Bot, messages: list[dict], max_new_tokens: int = 256) -> Iterator[str]:
    """The model's answer to the conversation, yielded piece by piece as it is generated. Closing
    the iterator early (Ctrl-C in the terminal, Stop on the page) stops the generation too."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(bot.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = prompt_ids(bot, messages)  # (1, T)
    stop = threading.Event()
    failure: list[BaseException] = []

    class Stopped(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    def generate() -> None:
        try:
            with torch.inference_mode():
                bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList([Stopped()]),
                                   **generation_kwargs(bot, max_new_tokens))
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


def reply(bot: Bot, messages: list[dict], max_new_tokens: int = 256) -> str:
    """The whole answer at once (greedy): the reference the server is checked against."""
    import torch

    ids = prompt_ids(bot, messages)
    with torch.inference_mode():
        out = bot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 **generation_kwargs(bot, max_new_tokens))
    return bot.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def repl(bot: Bot, max_new_tokens: int, read=input, write=sys.stdout.write) -> None:
    """The terminal conversation: each line a user turn, the reply streamed back."""
    messages = new_conversation(bot)
    write(f"Chatting with {bot.name}. {RESET} starts over, {QUIT} (or Ctrl-D) leaves.\n")
    if bot.system:
        write(f"system prompt (from the training data): {bot.system}\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if line == QUIT:
            return
        if line == RESET:
            messages = new_conversation(bot)
            write("(conversation reset)\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        write("bot> ")
        pieces = []
        try:
            for piece in stream_reply(bot, messages, max_new_tokens):
                pieces.append(piece)
                write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stop this answer, keep what came, stay in the chat
            write(" [interrupted]")
        write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces).strip()})


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the model, chat until /quit or end of input."""
    p = argparse.ArgumentParser(prog="python -m helpers.chatbot", description=__doc__.split("\n")[0])
    p.add_argument("run", help="the run folder, e.g. reports/smoke-20260101-120000")
    p.add_argument("--base", action="store_true", help="chat with the run's base model instead of the tuned one")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    a = p.parse_args(argv)
    try:
        bot = load(a.run, a.base)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    repl(bot, a.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
