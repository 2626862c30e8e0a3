"""The Ollama Modelfile of an exported chat model: its ChatML template in Ollama's Go syntax,
the stop tokens, the training system prompt; and rendering it back (Go -> Jinja2) for the check.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# The Go template Ollama renders (ChatML). The check reads it back from the Modelfile and renders
# it through GO_TO_JINJA, so a Modelfile that drifts from the model's own template fails the check.
CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")
GO_TO_JINJA = [("{{- range .Messages }}", "{%- for m in Messages %}"), ("{{ range .Messages }}", "{% for m in Messages %}"),
               ("{{ .Role }}", "{{ m.Role }}"), ("{{ .Content }}", "{{ m.Content }}"), ("{{ end }}", "{% endfor %}")]



class ExportError(RuntimeError):
    """An export that cannot be made or does not check out; the message says what and how to fix."""


def chatml(messages: list[dict], generation_prompt: bool) -> str:
    """Messages rendered in ChatML, the format SmolLM2, Qwen and many others use."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


@dataclass
class Template:
    """What the Modelfile needs from a model's chat template."""

    go: str  # Ollama's TEMPLATE
    default_system: str | None  # the system message the template adds when a chat has none


def translate_template(tokenizer) -> Template:
    """Ollama's Go template for the tokenizer's chat template, derived by rendering probe chats.

    Only ChatML templates are translated: each probe must render exactly as ChatML does,
    else an ExportError says the template is not one we can translate.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("the model has no chat template, so there is nothing to put in the Modelfile")
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    u1, a1, u2, s = ({"role": "user", "content": "Q1 <b>?"}, {"role": "assistant", "content": "A1."},
                     {"role": "user", "content": "Q2"}, {"role": "system", "content": "Be brief."})
    bare = render([u1], True)
    default = None
    m = re.fullmatch(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n(.*)", bare, re.S)
    if m and m.group(2) == chatml([u1], True):
        default = m.group(1)
    elif bare != chatml([u1], True):
        raise ExportError(f"the chat template is not ChatML (<|im_start|>role ... <|im_end|>), the one format "
                          f"we translate into Ollama's template syntax. It renders a user turn as {bare!r}. "
                          f"Use the GGUF with llama.cpp (it carries the template), or write the Modelfile's TEMPLATE by hand.")
    lead = [{"role": "system", "content": default}] if default is not None else []
    probes = [([s, u1, a1, u2], True, [s, u1, a1, u2]), ([u1, a1], False, lead + [u1, a1]),
              ([s, u1, a1], False, [s, u1, a1])]
    for msgs, gen, expected in probes:
        got = render(msgs, gen)
        if got != chatml(expected, gen):
            raise ExportError(f"the chat template is ChatML-like but renders {[m['role'] for m in msgs]} as {got!r}, "
                              f"not as ChatML; it cannot be translated into Ollama's syntax safely")
    return Template(CHATML_GO, default)


def stop_tokens(tokenizer, generation_config) -> list[str]:
    """Every token that ends the model's turn: the generation config's eos ids, the tokenizer's eos."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    names = [tokenizer.convert_ids_to_tokens(i) for i in ids] + [tokenizer.eos_token]
    if "<|im_start|>" in tokenizer.get_vocab():
        names.append("<|im_end|>")  # ChatML's end of turn, whatever the config calls eos
    return list(dict.fromkeys(n for n in names if n))


def modelfile(template: Template, stops: list[str], system: str | None) -> str:
    """The Ollama Modelfile text: FROM the GGUF beside it, TEMPLATE, stops, SYSTEM."""
    if system is not None and '"""' in system:
        raise ExportError('the system prompt contains """, which an Ollama Modelfile cannot quote; change it in the data')
    lines = ["# Ollama: ollama create <name> -f Modelfile && ollama run <name>  (written by make export)",
             "FROM ./model.gguf", f'TEMPLATE """{template.go}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def read_modelfile(text: str) -> dict[str, Any]:
    """TEMPLATE, SYSTEM and the stops of a Modelfile (the subset modelfile() writes)."""
    out: dict[str, Any] = {"stop": []}
    for key in ("TEMPLATE", "SYSTEM"):
        m = re.search(rf'^{key} """(.*?)"""', text, re.S | re.M)
        out[key.lower()] = m.group(1) if m else None
    for m in re.finditer(r"^PARAMETER stop (.+)$", text, re.M):
        out["stop"].append(json.loads(m.group(1)))
    return out


def render_go(template: str, messages: list[dict], system: str | None) -> str:
    """What Ollama renders for a chat: SYSTEM added when the chat has none, then the Go template.

    A few Go-template constructs map one to one onto Jinja2 (GO_TO_JINJA); a template using any
    other construct raises, rather than being checked wrongly.
    """
    import jinja2

    jin = template
    for go, jj in GO_TO_JINJA:
        jin = jin.replace(go, jj)
    if "{{ ." in jin or "{{- ." in jin or "{{ if" in jin or "{{- if" in jin:
        raise ExportError(f"the Modelfile's TEMPLATE uses Go constructs the check cannot render: {template!r}")
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + messages
    env = jinja2.Environment(autoescape=False, keep_trailing_newline=True)  # a prompt, not HTML
    return env.from_string(jin).render(Messages=[{"Role": m["role"], "Content": m["content"]} for m in messages])
