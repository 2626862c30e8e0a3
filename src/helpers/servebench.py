"""Serving benchmark: the model behind `make serve` under 1, 4 and 16 concurrent clients, beside
in-process batched `generate` on the same prompts (part of `make bench`).

    python -m helpers.bench --serving only          (just this table)

A server (helpers.serving, i.e. transformers serve) is started on a free 127.0.0.1 port in its own
process group; each client is a thread with the official `openai` client that sends its share of
the prompts one after another (greedy, the same max_tokens), so every load level answers the same
number of requests, and a bounded number. Per level: requests/s, p50 and p95 latency, generated
tokens/s (the server's own completion-token counts). The in-process row runs
`inference.generate` (left-padded batches, KV cache) on the same prompts; its latency is each
batch's wall time, which every request in the batch waits for. The server is always stopped.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import serving

CLIENTS = (1, 4, 16)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    import numpy as np

    return float(np.percentile(values, q))


def prompts_as_messages(rows: list[dict]) -> list[list[dict]]:
    """Each chat row's messages up to its last assistant turn: what a client would send."""
    out = []
    for r in rows:
        last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
        out.append(r["messages"][:last])
    return out


def client_load(base_url: str, model: str, conversations: list[list[dict]], clients: int,
                max_tokens: int) -> dict[str, Any]:
    """Send every conversation once, from `clients` concurrent threads; time each request."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(messages: list[dict]) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - t0, r.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(ask, conversations))
    wall = time.perf_counter() - start
    latencies = [s for s, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "seconds": wall, "requests_per_s": len(results) / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "tokens": tokens,
            "tokens_per_s": tokens / wall}


def in_process(folder: str | Path, rows: list[dict], max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """inference.generate on the same prompts, batched: the throughput without HTTP or a queue."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .inference import generate

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    start = time.perf_counter()
    answers = generate(model, tok, rows, max_new_tokens, batch_size)
    wall = time.perf_counter() - start
    sizes = [min(batch_size, len(rows) - i // batch_size * batch_size) for i in range(len(rows))]
    batch_seconds = [a["seconds"] * n for a, n in zip(answers, sizes)]  # each request waits for its whole batch
    tokens = sum(a["new_tokens"] for a in answers)
    return {"clients": batch_size, "requests": len(rows), "seconds": wall, "requests_per_s": len(rows) / wall,
            "p50_s": percentile(batch_seconds, 50), "p95_s": percentile(batch_seconds, 95), "tokens": tokens,
            "tokens_per_s": tokens / wall}


def run(folder: str | Path, rows: list[dict], max_new_tokens: int, batch_size: int = 16,
        clients: tuple[int, ...] = CLIENTS, server_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """The serving table: the server under each client count, then in-process batched generate."""
    conversations = prompts_as_messages(rows)
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = serving.launch(folder, port, *server_args, log=log)
        try:
            serving.wait_ready(proc, url)
            model = Path(folder).name
            client_load(url, model, conversations[:1], 1, max_new_tokens)  # warm-up, not timed
            levels = [client_load(url, model, conversations, c, max_new_tokens) for c in clients]
        except Exception as e:
            raise RuntimeError(f"serving bench failed: {e}\nserver log:\n{log.read_text()[-3000:]}") from None
        finally:
            serving.stop(proc)
    return {"engine": "transformers serve" + (" " + " ".join(server_args) if server_args else ""),
            "server": levels, "in_process": in_process(folder, rows, max_new_tokens, batch_size),
            "max_new_tokens": max_new_tokens, "prompts": len(rows)}


def markdown(result: dict[str, Any]) -> str:
    """The serving table as markdown."""
    rows = [f"| serving ({result['prompts']} prompts, greedy, max {result['max_new_tokens']} new tokens) | clients "
            "| requests/s | p50 latency s | p95 latency s | generated tokens/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["server"]:
        rows.append(f"| {result['engine']} | {r['clients']} | {r['requests_per_s']:.2f} | {r['p50_s']:.2f} | "
                    f"{r['p95_s']:.2f} | {r['tokens_per_s']:.1f} |")
    r = result["in_process"]
    rows.append(f"| in-process generate, batches of {r['clients']} | - | {r['requests_per_s']:.2f} | {r['p50_s']:.2f} | "
                f"{r['p95_s']:.2f} | {r['tokens_per_s']:.1f} |")
    return "\n".join(rows)


def summary(result: dict[str, Any]) -> str:
    """One line: the best served throughput against in-process batching."""
    best = max(result["server"], key=lambda r: r["tokens_per_s"])
    return (f"serving: {best['tokens_per_s']:.1f} generated tokens/s at best ({best['clients']} clients), "
            f"in-process batched {result['in_process']['tokens_per_s']:.1f}; "
            f"p50 latency {statistics.median([r['p50_s'] for r in result['server']]):.2f} s across loads")
