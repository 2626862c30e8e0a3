"""Serve a run's chat model over an OpenAI-compatible HTTP API, named after the run.

    python -m helpers.serving reports/<run> [--port 8000] [--host 127.0.0.1] [--base]   (make serve RUN=...)

The server is the field's own: `transformers serve` from the pinned transformers (FastAPI +
uvicorn: `/v1/models`, `/v1/chat/completions` with and without streaming, `/health`), or vLLM's
`vllm serve` when a CUDA GPU is visible and the `vllm` command is installed (`--engine` picks one
by hand). Both serve `model/final/` under the run's folder name, so a client asks for
`model="<run name>"`; `/v1/models` lists exactly that one model. It binds 127.0.0.1 unless told
otherwise: a server on 0.0.0.0 answers anyone who can reach the machine, with no auth.

Why a wrapper and not the bare `transformers serve reports/<run>/model/final`: that command names
the model by its path (`/abs/path/model/final@main` in every answer), its `/v1/models` scans the
Hugging Face cache instead of listing what it serves, and a request without `messages` or with a
wrongly typed field crashes its handler into a 500. We keep its app, handlers and generation, give
its ModelManager our name for the folder (RunModelManager) and check each chat request's shape
first, answering a malformed one with a 400 in OpenAI's error format (check_chat_request), and
one for another model with OpenAI's 404 `model_not_found` (the bare server says 400 "pinned").
The vLLM path is one command line (vllm_command), untested here: the project's machines have no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import chatbot
from .config import ConfigError
from .runs import Run

ENGINES = ("auto", "transformers", "vllm")


def pick_engine(requested: str = "auto") -> str:
    """vLLM where it can run (a CUDA GPU and the vllm command), else transformers serve."""
    if requested != "auto":
        return requested
    import torch

    return "vllm" if torch.cuda.is_available() and shutil.which("vllm") else "transformers"


class _Message(BaseModel):
    """One chat message: a known role and text (or OpenAI content parts)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None


class _ChatRequest(BaseModel):
    """The fields of a chat completion request the handler relies on; the rest it checks itself."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = None
    stop: str | list[str] | None = None


def check_chat_request(body: Any) -> str | None:
    """What is wrong with a /v1/chat/completions body, in one line; None when nothing is."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    try:
        _ChatRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        return f"{where}: {err['msg']}"
    return None


def openai_error(status: int, message: str, code: str | None = None):
    """A JSON error response shaped like OpenAI's, so clients raise their usual exception with our message."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}}, status_code=status)


def with_request_checks(build_server, served: str):
    """transformers serve's app factory, wrapped: a malformed chat request gets a 400, and one for another
    model a 404 (OpenAI's model_not_found), before its handler sees them."""

    def build(*args, **kwargs):
        app = build_server(*args, **kwargs)

        @app.middleware("http")
        async def reject_malformed(request, call_next):
            if request.method == "POST" and request.url.path == "/v1/chat/completions":
                try:
                    body = json.loads(await request.body())
                except ValueError:
                    return openai_error(400, "the request body is not valid JSON")
                problem = check_chat_request(body)
                if problem:
                    return openai_error(400, problem)
                if body.get("model") not in (None, served):
                    return openai_error(404, f"model {body['model']!r} is not served here; this server serves "
                                             f"{served!r} (GET /v1/models)", code="model_not_found")
            return await call_next(request)

        return app

    return build


def run_model_manager(name: str, folder: str | Path):
    """transformers serve's ModelManager class, made to serve one local folder under one name."""
    from transformers.cli.serving.model_manager import ModelManager

    created = int(time.time())

    class RunModelManager(ModelManager):
        """Loads `folder` when asked for `name`; lists only that model."""

        def process_model_name(self, model_id: str) -> str:
            """Our ids are run names, not hub ids with an @revision: keep them as they are."""
            return model_id

        def _folder(self, model_id: str) -> str:
            if model_id != name:  # unreachable through the API: the forced model answers every request
                raise ValueError(f"this server serves {name!r} only, not {model_id!r}")
            local = Path(folder)  # a hub id (a base model from the HF cache) stays as it is
            return f"{local.resolve() if local.exists() else folder}@main"  # @main is ignored for a local folder

        def _load_processor(self, model_id_and_revision, gguf_file=None):
            return super()._load_processor(self._folder(model_id_and_revision), gguf_file=gguf_file)

        def _load_model(self, model_id_and_revision, *args, **kwargs):
            return super()._load_model(self._folder(model_id_and_revision), *args, **kwargs)

        def get_gen_models(self, cache_dir: str | None = None) -> list[dict]:
            return [{"id": name, "object": "model", "created": created, "owned_by": "tunebook"}]

    return RunModelManager


def serve_transformers(name: str, folder: str | Path, host: str, port: int, continuous_batching: bool = False,
                       log_level: str = "warning"):
    """Run `transformers serve` on folder as `name` (blocks until the server stops)."""
    from transformers.cli import serve as serve_cli
    from transformers.cli.serving import model_manager, server

    # Serve imports its ModelManager and app factory from these module attributes when it starts;
    # this process runs nothing else, so we point them at ours for the process's lifetime.
    model_manager.ModelManager = run_model_manager(name, folder)
    server.build_server = with_request_checks(server.build_server, name)
    return serve_cli.Serve(force_model=name, host=host, port=port, device="cpu" if not _cuda() else "auto",
                           continuous_batching=continuous_batching, log_level=log_level)


def vllm_command(name: str, folder: str | Path, host: str, port: int) -> list[str]:
    """The vLLM command line serving folder as `name` (untested here: no GPU on the project's machines)."""
    return ["vllm", "serve", str(folder), "--served-model-name", name, "--host", host, "--port", str(port)]


def target(path: str | Path, base: bool = False) -> tuple[Path | str, str]:
    """(model folder, model id) for a run folder (its tuned or base model) or a plain model folder."""
    path = Path(path)
    if not (path / "config.yaml").is_file() and (path / "config.json").is_file():
        return path, path.name  # a saved transformers model (the bench serves the bundled base model so)
    run = chatbot.chat_run(path)
    return chatbot.model_folder(run, base), chatbot.model_id(run, base)


# ---------------------------------------------------------------- a server in a child process (tests, bench)

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(path: str | Path, port: int, *extra: str, host: str = "127.0.0.1", log: Path | None = None):
    """Start `python -m helpers.serving path` in its own process group; returns the Popen."""
    import subprocess

    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "helpers.serving", str(path), "--host", host, "--port", str(port),
                             *extra], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc, url: str, timeout: float = 300.0) -> None:
    """Block until GET url/health answers 200; raise if the process died or time ran out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server at {url} was not ready after {timeout:.0f} s")


def stop(proc, grace: float = 10.0) -> None:
    """Stop a launched server and everything it started (its whole process group)."""
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m helpers.serving", description=__doc__.split("\n")[0])
    p.add_argument("run", help="the run folder, e.g. reports/smoke-20260101-120000 (or a saved model folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network, unauthenticated)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--base", action="store_true", help="serve the run's base model (as <run>+base) instead")
    p.add_argument("--engine", choices=ENGINES, default="auto", help="auto: vLLM on a CUDA GPU with vllm installed")
    p.add_argument("--continuous-batching", action="store_true",
                   help="transformers serve: batch concurrent requests (paged attention) instead of one at a time; "
                        "for GPUs (on our CPU machine the server process died at the first request)")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    try:
        folder, name = target(a.run, a.base)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = pick_engine(a.engine)
    system = chatbot.system_prompt(Run(Path(a.run)))
    print(f"serving {folder} as model {name!r} with {engine} on http://{a.host}:{a.port}/v1", flush=True)
    if system:
        print(f"the training system prompt (send it as the first message for answers like the tuned ones): {system}",
              flush=True)
    if engine == "vllm":
        cmd = vllm_command(name, folder, a.host, a.port)
        os.execvp(cmd[0], cmd)  # vLLM's own server takes over this process
    serve_transformers(name, folder, a.host, a.port, a.continuous_batching, a.log_level)
    return 0


def _cuda() -> bool:
    """Whether a CUDA GPU is visible."""
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
