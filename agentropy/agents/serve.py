"""A small OpenAI-compatible completions server over the ``hf`` backend (``agentropy serve-model``).

It lets the ``openai`` backend (and any OpenAI client) sample from a local checkpoint, the tiny
model included, with the same numbers as the ``hf`` backend: endpoints ``POST /v1/completions``,
``GET /v1/models`` and ``GET /health``; responses in vLLM's shape, so token ids come back as
``"token_id:<id>"`` when ``return_tokens_as_token_ids`` is set.

Numbers. ``token_logprobs`` are the ``hf`` backend's own (exact, full vocabulary, at the sampling
temperature; T = 1 for greedy). ``top_logprobs`` need the whole distribution at each position,
which the sampling loop does not keep, so they come from one teacher-forced forward pass over
prompt + reply per completion (a prefill, far cheaper than the decode loop); the sampled token
always appears in its position's dict with the sampling-time value, as vLLM does.

Concurrency. Requests are parsed on their own threads (``ThreadingHTTPServer``) but generation
is serialised by a lock: one model, one forward at a time, and a request's ``seed`` gives the
same completions whatever else the server is doing. Choices of a request with several prompts
or ``n > 1`` come back prompt-major (index ``prompt * n + j``), as vLLM orders them.

Robustness, to the search service's standard: an accept backlog of 256 so a burst of clients is
never reset, every bad request (a body that is not UTF-8 or not JSON, ``NaN`` or ``Infinity``
anywhere, out-of-range numbers) a 4xx with a JSON error body, and quiet logs: a client that
hangs up or leaves a connection half-open costs a thread for at most ``REQUEST_TIMEOUT_S``
and no traceback.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentropy.agents.backends.base import Completion, SamplingParams

MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_S = 60.0
TOKEN_ID_PREFIX = "token_id:"


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        kind = (
            "NotFoundError"
            if self.status == 404
            else "BadRequestError"
            if self.status < 500
            else "InternalServerError"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


@dataclass
class ServedModel:
    """What the server serves: an ``HFBackend``, its tokenizer and the public model name."""

    backend: Any
    tokenizer: Any
    name: str
    max_logprobs: int = 20
    max_model_len: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: int = field(default_factory=lambda: int(time.time()))


def _int_field(
    body: dict[str, Any], name: str, default: int | None, low: int, high: int | None = None
) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"`{name}` must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RequestError(400, f"`{name}` must be {bound}, got {value}", name)
    return value


def _float_field(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"`{name}` must be a number, got {value!r}", name)
    if not math.isfinite(value):
        raise RequestError(400, f"`{name}` must be a finite number, got {value!r}", name)
    return float(value)


def parse_prompts(prompt: Any, tokenizer: Any) -> list[list[int]]:
    """The completions API's four prompt forms: str, list[int], list[str], list[list[int]]."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(
            400, "`prompt` must be a non-empty string, token-id list, or list of either", "prompt"
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    out: list[list[int]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            ids = list(tokenizer(item)["input_ids"])
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            ids = list(item)
        else:
            raise RequestError(400, f"`prompt[{i}]` must be a string or a list of token ids", "prompt")
        if not ids:
            raise RequestError(400, f"`prompt[{i}]` is empty", "prompt")
        vocab = len(tokenizer)
        if min(ids) < 0 or max(ids) >= vocab:
            raise RequestError(400, f"`prompt[{i}]` has token ids outside [0, {vocab})", "prompt")
        out.append(ids)
    return out


def parse_request(served: ServedModel, body: Any) -> tuple[list[list[int]], SamplingParams, int | None, bool]:
    """Validate a completions body; return prompts, sampling params, ``logprobs`` k, ids-as-tokens."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served.name:
        raise RequestError(
            404, f"The model `{model}` does not exist (this server serves `{served.name}`)", "model"
        )
    if body.get("stream"):
        raise RequestError(400, "`stream` is not supported by agentropy serve-model", "stream")
    if body.get("echo"):
        raise RequestError(400, "`echo` is not supported by agentropy serve-model", "echo")
    if "prompt" not in body:
        raise RequestError(400, "`prompt` is required", "prompt")
    prompts = parse_prompts(body["prompt"], served.tokenizer)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "`stop` must be a non-empty string or a list of them", "stop")
    max_tokens = _int_field(body, "max_tokens", 16, 1)
    if served.max_model_len is not None:
        longest = max(len(p) for p in prompts)
        if longest + max_tokens > served.max_model_len:
            raise RequestError(
                400,
                f"prompt ({longest} tokens) + `max_tokens` ({max_tokens}) exceeds the model's "
                f"context length {served.max_model_len}",
                "max_tokens",
            )
    try:
        params = SamplingParams(
            n=_int_field(body, "n", 1, 1, 128),
            temperature=_float_field(body, "temperature", 1.0),
            top_p=_float_field(body, "top_p", 1.0),
            max_tokens=max_tokens,
            stop=tuple(stop),
            seed=_int_field(body, "seed", None, 0),
        )
    except ValueError as exc:
        field_name = str(exc).split()[0].removeprefix("SamplingParams.")
        raise RequestError(400, str(exc), field_name) from exc
    logprobs = _int_field(body, "logprobs", None, 0, served.max_logprobs)
    ids_as_tokens = bool(body.get("return_tokens_as_token_ids", False))
    return prompts, params, logprobs, ids_as_tokens


def teacher_forced_top_logprobs(
    model: Any, prompt: list[int], reply: list[int], temperature: float, k: int
) -> list[dict[int, float]]:
    """Top-``k`` log-probs of ``softmax(z / T)`` at each reply position (T = 0 means 1).

    One forward over ``prompt + reply[:-1]`` keeping the last ``len(reply)`` logits, shape
    ``(len(reply), V)``; returns one ``{token_id: logprob}`` dict per reply token.
    """
    import torch

    if not reply or k == 0:
        return [{} for _ in reply]
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + reply[:-1]], dtype=torch.long, device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids, logits_to_keep=len(reply)).logits[0]
    z = logits.float() / temperature if temperature > 0 else logits.float()
    values, indices = torch.log_softmax(z, dim=-1).topk(min(k, z.shape[-1]), dim=-1)
    return [dict(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]


def _token_str(served: ServedModel, token_id: int, ids_as_tokens: bool) -> str:
    if ids_as_tokens:
        return f"{TOKEN_ID_PREFIX}{token_id}"
    return served.tokenizer.decode([token_id])


def _choice_logprobs(
    served: ServedModel, completion: Completion, tops: list[dict[int, float]], ids_as_tokens: bool
) -> dict[str, Any]:
    tokens = [_token_str(served, t, ids_as_tokens) for t in completion.token_ids]
    offsets, pos = [], 0
    for t in completion.token_ids:
        offsets.append(pos)
        pos += len(served.tokenizer.decode([t]))
    top_dicts = []
    for token_id, logprob, top in zip(completion.token_ids, completion.logprobs, tops, strict=True):
        entry = {_token_str(served, t, ids_as_tokens): v for t, v in top.items() if t != token_id}
        entry[_token_str(served, token_id, ids_as_tokens)] = logprob
        top_dicts.append(entry)
    return {
        "text_offset": offsets,
        "token_logprobs": completion.logprobs,
        "tokens": tokens,
        "top_logprobs": top_dicts,
    }


def complete(served: ServedModel, body: Any) -> dict[str, Any]:
    """Answer one ``POST /v1/completions`` body (vLLM's response shape)."""
    prompts, params, logprobs, ids_as_tokens = parse_request(served, body)
    with served.lock:
        completions = served.backend.generate(prompts, params)
        tops: list[list[dict[int, float]]] = []
        if logprobs:
            model = served.backend.model
            for c_index, completion in enumerate(completions):
                prompt = prompts[c_index // params.n]
                tops.append(
                    teacher_forced_top_logprobs(
                        model, prompt, completion.token_ids, params.temperature, logprobs
                    )
                )
        else:
            tops = [[{} for _ in c.token_ids] for c in completions]
    choices = []
    for index, (completion, top) in enumerate(zip(completions, tops, strict=True)):
        choices.append(
            {
                "index": index,
                "text": completion.text,
                "logprobs": None
                if logprobs is None
                else _choice_logprobs(served, completion, top, ids_as_tokens),
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.extra.get("stop"),
            }
        )
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def models_list(served: ServedModel) -> dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    return {
        "object": "list",
        "data": [
            {
                "id": served.name,
                "object": "model",
                "created": served.created,
                "owned_by": "agentropy",
                "max_model_len": served.max_model_len,
            }
        ],
    }


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> Any:
    """The request body as JSON, or a 400: not UTF-8, not JSON, or holding ``NaN``/``Infinity``
    (Python's ``json`` accepts those literals; no JSON client sends them on purpose)."""
    try:
        text = raw.decode("utf-8") if raw else "null"
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None


def _handler_class(served: ServedModel, verbose: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
        server_version = "agentropy-serve-model"
        timeout = REQUEST_TIMEOUT_S  # a half-open connection frees its thread after this long

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, exc: RequestError) -> None:
            self._send(exc.status, exc.body())

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
                self._send(200, {"status": "ok"})
            elif path in ("/v1/models", "/models"):
                self._send(200, models_list(served))
            else:
                self._error(RequestError(404, f"no route GET {self.path}"))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                self._error(
                    RequestError(
                        413 if length > 0 else 400, f"bad Content-Length (max {MAX_BODY_BYTES} bytes)"
                    )
                )
                return
            raw = self.rfile.read(length)
            if len(raw) < length:  # the client hung up mid-body: nobody to answer
                self.close_connection = True
                return
            if path not in ("/v1/completions", "/completions"):
                self._error(RequestError(404, f"no route POST {self.path}"))
                return
            try:
                self._send(200, complete(served, parse_body(raw)))
            except RequestError as exc:
                self._error(exc)
            except Exception as exc:  # a bug or an OOM must not kill the server thread silently
                self._error(RequestError(500, f"{type(exc).__name__}: {exc}"))

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            if verbose:
                super().log_message(format, *args)

    return Handler


def make_server(
    served: ServedModel, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
) -> ThreadingHTTPServer:
    """Bind (``port=0``: a free port) without serving yet; ``server.server_address`` has the port."""
    return ModelServer((host, port), _handler_class(served, verbose), verbose=verbose)


class ModelServer(ThreadingHTTPServer):
    """A thread per connection, a deep accept backlog, and no tracebacks for clients that go away."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], verbose: bool = False) -> None:
        self.verbose = verbose
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A reset, a broken pipe or a timed-out half-open connection is the client's business:
        one line when verbose, else nothing. Anything else is a bug and keeps its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
            if self.verbose:
                print(f"serve-model: {client_address[0]}: {type(exc).__name__}", file=sys.stderr)
            return
        super().handle_error(request, client_address)


def server_url(server: ThreadingHTTPServer) -> str:
    """The ``/v1`` root clients should use (``base_url`` of ``OpenAIBackend``)."""
    host, port = server.server_address[:2]
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


def load_served_model(
    model_path: str, name: str | None = None, device: str | None = None, max_logprobs: int = 20
) -> ServedModel:
    """Load a checkpoint folder (the tiny model or any Hugging Face causal LM) behind an ``HFBackend``."""
    from agentropy.agents.backends.hf import HFBackend
    from agentropy.agents.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, device=device)
    max_len = getattr(model.config, "max_position_embeddings", None)
    return ServedModel(
        backend=HFBackend(model, tokenizer),
        tokenizer=tokenizer,
        name=name or str(model_path),
        max_logprobs=max_logprobs,
        max_model_len=int(max_len) if max_len else None,
    )
