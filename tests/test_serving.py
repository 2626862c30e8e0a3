"""The OpenAI-compatible server (transformers serve behind helpers.serving) on the smoke model."""
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import chatbot, serving

ROOT = Path(__file__).parents[1]
MAX_TOKENS = 12


@pytest.mark.parametrize("body, problem", [
    ({"model": "m"}, "messages: Field required"),
    ({"messages": []}, "messages: List should have at least 1 item"),
    ({"messages": "hi"}, "messages: Input should be a valid list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role: Input should be"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature: Input should be a valid number"),
    ([{"role": "user", "content": "hi"}], "the request body must be a JSON object"),
])
def test_malformed_chat_requests_are_named(body, problem):
    assert problem in serving.check_chat_request(body)


def test_well_formed_chat_requests_pass():
    assert serving.check_chat_request({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 5, "temperature": 0, "stream": True}) is None
    content_parts = [{"type": "text", "text": "hi"}]  # the OpenAI clients' other content shape
    assert serving.check_chat_request({"messages": [{"role": "user", "content": content_parts}]}) is None


def test_engine_choice_is_explicit():
    import torch

    expected = "vllm" if torch.cuda.is_available() and shutil.which("vllm") else "transformers"
    assert serving.pick_engine("auto") == expected
    assert serving.pick_engine("vllm") == "vllm"
    cmd = serving.vllm_command("smoke-1", "/m/final", "127.0.0.1", 8001)
    assert cmd[:3] == ["vllm", "serve", "/m/final"] and "--served-model-name" in cmd and "smoke-1" in cmd


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_serve_binds_localhost_unless_told():
    def dry(*args):
        return subprocess.run(["make", "-n", "-o", ".venv/.tunebook-installed", "serve", *args],
                              cwd=ROOT, capture_output=True, text=True).stdout

    assert "helpers.serving reports/x --host 127.0.0.1 --port 8000" in dry("RUN=reports/x")
    assert "--host 0.0.0.0 --port 9001 --base" in dry("RUN=reports/x", "HOST=0.0.0.0", "PORT=9001", "BASE=1")


# ---------------------------------------------------------------- a live server

@pytest.fixture(scope="module")
def server(smoke_chat_run, tmp_path_factory):
    """The smoke run served on a free 127.0.0.1 port; stopped (its process group killed) afterwards."""
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = serving.launch(smoke_chat_run, port, log=log)
    try:
        serving.wait_ready(proc, url, timeout=600)
        yield url
    finally:
        serving.stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def bot(smoke_chat_run):
    return chatbot.load(smoke_chat_run)


def conversation(bot, question: str) -> list[dict]:
    return chatbot.new_conversation(bot) + [{"role": "user", "content": question}]


@pytest.mark.slow
def test_models_lists_the_run_by_name(client, smoke_chat_run):
    assert [m.id for m in client.models.list().data] == [smoke_chat_run.name]


@pytest.mark.slow
def test_greedy_answer_matches_in_process_generation(client, bot, smoke_chat_run):
    messages = conversation(bot, "How do I reset my password?")
    expected = chatbot.reply(bot, messages, MAX_TOKENS)
    r = client.chat.completions.create(model=smoke_chat_run.name, messages=messages, max_tokens=MAX_TOKENS,
                                       temperature=0)
    assert r.model == smoke_chat_run.name and r.choices[0].message.content == expected
    assert r.usage.completion_tokens <= MAX_TOKENS
    stream = client.chat.completions.create(model=smoke_chat_run.name, messages=messages, max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == expected  # streamed, token by token


@pytest.mark.slow
def test_eight_concurrent_requests_are_all_answered(client, bot, smoke_chat_run):
    questions = [f"Question {i}: can I get a refund for order {100 + i}?" for i in range(8)]

    def ask(q):
        return client.chat.completions.create(model=smoke_chat_run.name, messages=conversation(bot, q),
                                              max_tokens=4, temperature=0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, questions))
    assert len(answers) == 8
    assert all(a.choices[0].message.content and a.choices[0].finish_reason in ("stop", "length") for a in answers)
    assert len({a.id for a in answers}) == 8


@pytest.mark.slow
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(client, server, bot, smoke_chat_run):
    from openai import BadRequestError, NotFoundError

    with pytest.raises(BadRequestError, match="messages: List should have at least 1 item"):
        client.chat.completions.create(model=smoke_chat_run.name, messages=[], max_tokens=2)
    with pytest.raises(NotFoundError, match=f"'gpt-4o' is not served here; this server serves '{smoke_chat_run.name}'"):
        client.chat.completions.create(model="gpt-4o", messages=conversation(bot, "hi"), max_tokens=2)
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "bogus": 1})
    assert r.status_code == 422  # transformers serve's own check of unknown fields
    ok = client.chat.completions.create(model=smoke_chat_run.name, messages=conversation(bot, "hi"), max_tokens=2)
    assert ok.choices[0].message.content


def test_serving_bench_sends_each_prompt_up_to_its_last_answer_and_tabulates():
    from helpers import servebench

    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": "a2"}]}
    assert servebench.prompts_as_messages([row]) == [row["messages"][:4]]
    assert servebench.percentile([1, 2, 3, 4], 50) == 2.5 and servebench.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    level = {"clients": 4, "requests": 8, "seconds": 4.0, "requests_per_s": 2.0, "p50_s": 1.5, "p95_s": 2.25,
             "tokens": 80, "tokens_per_s": 20.0}
    result = {"engine": "transformers serve", "server": [level], "in_process": {**level, "clients": 16},
              "max_new_tokens": 32, "prompts": 8}
    table = servebench.markdown(result).splitlines()
    assert table[2] == "| transformers serve | 4 | 2.00 | 1.50 | 2.25 | 20.0 |"
    assert table[3] == "| in-process generate, batches of 16 | - | 2.00 | 1.50 | 2.25 | 20.0 |"
