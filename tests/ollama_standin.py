"""An Ollama stand-in that speaks Ollama's wire format (see shared/ollama-wire.md).

Used by the tests and the benchmark in place of a real Ollama: same routes, status
codes, content types, NDJSON and SSE framing, Origin and Host checks, and generation
that stops when the client goes away. It records what it saw so tests can assert on
what reached "Ollama".

Run alone: `python -m tests.ollama_standin --port 11434` (or via a fake `ollama serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import zstandard
from aiohttp import web

from tests import go_json

VERSION = "0.30.3-standin"
REPLY = "The sky is blue because air scatters short blue wavelengths of sunlight more than red ones."
ALLOWED_ORIGIN_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
ALLOWED_ORIGIN_SCHEMES = ("app:", "file:", "tauri:", "vscode-webview:")


def tokens(n: int) -> list[str]:
    words = REPLY.split(" ")
    return [(" " if i else "") + words[i % len(words)] for i in range(n)]


def generation(state: StandinState, n: int) -> list[str]:
    """One generation's `n` tokens: with `number_generations`, each says which one it is."""
    state.generations += 1
    return [f"{token}#{state.generations}" for token in tokens(n)] if state.number_generations else tokens(n)


async def _in_pieces(request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
    """A body of declared length written in `body_pieces` writes, as a slow writer would."""
    state = request.app[STATE_KEY]
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(body)
    await response.prepare(request)
    size = -(-len(body) // state.body_pieces)
    for start in range(0, len(body), size):
        if start:
            await asyncio.sleep(state.token_delay)
        await response.write(body[start : start + size])
    await response.write_eof()
    return response


@dataclass
class Seen:
    method: str
    path: str  # with the query string, as received
    headers: dict[str, str]
    body: bytes
    peer: tuple = ()  # the client's (host, port): which connection carried the request


@dataclass
class StandinState:
    models: list[str] = field(default_factory=lambda: ["llama3.2:latest", "glm-4.7-flash:q8_0"])
    token_count: int = 8
    token_delay: float = 0.0  # seconds between streamed lines
    first_token_delay: float = 0.0  # "model load" before any header is sent
    gate: asyncio.Queue | None = None  # when set, each line after the first waits for a permit
    die_after: int | None = None  # drop the connection after this many streamed lines
    fail_pull: set[str] = field(default_factory=set)
    number_generations: bool = False  # each token ends with "#n", n counting the generations
    generations: int = 0
    body_pieces: int = 1  # a non-streamed answer's body in this many writes (token_delay apart)
    seen: list[Seen] = field(default_factory=list)
    streams_started: int = 0
    streams_finished: int = 0
    streams_cancelled: int = 0
    cancel_times: list[float] = field(default_factory=list)
    active: int = 0


STATE_KEY = web.AppKey("state", StandinState)


def _go_json(obj) -> bytes:
    """Go's encoding/json: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _gin_json(obj, status: int = 200) -> web.Response:
    """gin's c.JSON, as Ollama's native handlers answer: no trailing newline."""
    return web.Response(status=status, body=_go_json(obj), headers={"Content-Type": "application/json; charset=utf-8"})


def _openai_json(obj, status: int = 200) -> web.Response:
    """Ollama's OpenAI writers: json.NewEncoder (a trailing newline), no charset."""
    return web.Response(status=status, body=_go_json(obj) + b"\n", headers={"Content-Type": "application/json"})


def _error(status: int, message: str) -> web.Response:
    return _gin_json({"error": message}, status=status)


def _openai_error(status: int, message: str, kind: str) -> web.Response:
    return _openai_json({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


def _origin_allowed(origin: str) -> bool:
    if origin.startswith(ALLOWED_ORIGIN_SCHEMES):
        return True
    host = origin.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ALLOWED_ORIGIN_HOSTS


def _host_allowed(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
    return name in ("localhost", "127.0.0.1", "::1") or name.endswith((".local", ".internal"))


@web.middleware
async def record_and_check(request: web.Request, handler):
    state = request.app[STATE_KEY]
    body = await request.read()
    state.seen.append(Seen(request.method, request.raw_path, dict(request.headers), body, tuple(request.transport.get_extra_info("peername") or ())))
    if "Origin" in request.headers and not _origin_allowed(request.headers["Origin"]):
        return web.Response(status=403)  # Ollama: 403 with an empty body
    if not _host_allowed(request.headers.get("Host", "")):
        return web.Response(status=403)
    return await handler(request)


# The fields Ollama's handlers decode and the stand-in acts on, with their Go types: read
# as Go's encoding/json reads them (tests/go_json.py), so the stand-in runs, copies or
# deletes the model Ollama would. The OpenAI and Anthropic structs' `stream` is a bool.
_NATIVE_FIELDS = {"model": go_json.STRING, "name": go_json.STRING, "source": go_json.STRING, "destination": go_json.STRING, "from": go_json.STRING, "stream": go_json.BOOL_POINTER}
_OPENAI_FIELDS = {"model": go_json.STRING, "stream": go_json.BOOL}


async def _json_body(request: web.Request, raw: bytes | None = None, fields: dict[str, str] | None = None) -> dict | web.Response:
    """The body as Ollama's handler reads it (`raw`: already read and inflated)."""
    raw = await request.read() if raw is None else raw
    if not raw:
        return _error(400, "missing request body")
    fields = fields or (_OPENAI_FIELDS if request.path.startswith("/v1/") else _NATIVE_FIELDS)
    try:
        read = go_json.decode(raw, fields)
        body = json.loads(raw)  # the other fields, simply
    except (ValueError, RecursionError) as exc:  # Go's decoder stops at depth 10,000: a 400 too
        return _error(400, f"invalid character in request body: {exc}")
    if not isinstance(body, dict):
        return _error(400, "invalid request body")
    read_here = {go_json.fold(name) for name in fields}
    return {**{k: v for k, v in body.items() if go_json.fold(k) not in read_here}, **read}


def _model_of(body: dict) -> str:
    return body.get("model") or body.get("name") or ""


async def _native_request(request: web.Request) -> tuple[dict, str] | web.Response:
    """A native handler's body and the model it names, or Ollama's 400."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    model = _model_of(body)
    return (body, model) if model else _error(400, "model is required")


def _canonical(name: str) -> str:
    """Ollama's name rules, simply: the default host and `library/` namespace are optional,
    the tag defaults to `latest`, and case does not matter."""
    name = name.lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _find(state: StandinState, model: str) -> str | None:
    """The stored name `model` refers to, if any."""
    wanted = _canonical(model)
    return next((m for m in state.models if _canonical(m) == wanted), None)


def _known(state: StandinState, model: str) -> bool:
    return _find(state, model) is not None


def _namespace(name: str) -> str:
    parts = name.rsplit(":", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def _model_entry(name: str) -> dict:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-11-01T10:00:00.000000000Z",
        "size": 2019393189,
        "digest": digest,
        "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    }


async def _stream_lines(request: web.Request, lines, content_type: str, sse: bool = False) -> web.StreamResponse:
    """Write each line as its own chunk, flushed, honouring the test controls."""
    state = request.app[STATE_KEY]
    state.streams_started += 1
    state.active += 1
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    try:
        await response.prepare(request)
        for i, line in enumerate(lines):
            if i:
                if state.gate is not None:
                    await state.gate.get()
                if state.token_delay:
                    await asyncio.sleep(state.token_delay)
            if state.die_after is not None and i >= state.die_after:
                request.transport.close()  # Ollama crashed
                return response
            data = f"data: {json.dumps(line)}\n\n" if sse and not isinstance(line, str) else line
            if isinstance(data, dict):
                data = json.dumps(data) + "\n"
            await response.write(data.encode())
        await response.write_eof()
        state.streams_finished += 1
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: Ollama cancels the generation on the request context.
        state.streams_cancelled += 1
        state.cancel_times.append(time.monotonic())
        raise
    finally:
        state.active -= 1


def _durations(count: int) -> dict:
    return {
        "total_duration": 1_200_000_000,
        "load_duration": 50_000_000,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 40_000_000,
        "eval_count": count,
        "eval_duration": 1_000_000_000,
    }


async def generate_or_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    chat = request.path == "/api/chat"
    read = await _native_request(request)
    if isinstance(read, web.Response):
        return read
    body, model = read
    if not _known(state, model):
        return _error(404, f"model '{model}' not found")
    await _loading(state)
    count = int(body.get("options", {}).get("num_predict", state.token_count))
    empty = not body.get("messages") if chat else not body.get("prompt")
    parts = [] if empty else generation(state, count)
    created = "2026-11-27T10:00:00.000000000Z"

    def piece(text: str) -> dict:
        if chat:
            return {"model": model, "created_at": created, "message": {"role": "assistant", "content": text}, "done": False}
        return {"model": model, "created_at": created, "response": text, "done": False}

    final = {**piece(""), "done": True, "done_reason": "load" if empty else "stop", **_durations(len(parts))}
    if not chat:
        final["context"] = [1, 2, 3]
    if body.get("stream") is False:
        text = "".join(parts)
        single = {**final, **({"message": {"role": "assistant", "content": text}} if chat else {"response": text})}
        if state.body_pieces > 1:
            return await _in_pieces(request, json.dumps(single).encode(), "application/json; charset=utf-8")
        return web.Response(body=json.dumps(single).encode(), content_type="application/json", charset="utf-8")
    lines = [piece(p) for p in parts] + [final]
    return await _stream_lines(request, lines, "application/x-ndjson")


async def pull(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    read = await _native_request(request)
    if isinstance(read, web.Response):
        return read
    body, model = read
    digest = "sha256:" + hashlib.sha256(model.encode()).hexdigest()
    total = 4_000_000
    if model in state.fail_pull:
        lines = [{"status": "pulling manifest"}, {"error": f"pull model manifest: file does not exist: {model}"}]
    else:
        lines = [{"status": "pulling manifest"}]
        lines += [{"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": c} for c in range(0, total + 1, total // 4)]
        lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        if not _known(state, model):
            state.models.append(_canonical(model))
    if body.get("stream") is False:
        last = lines[-1]
        return _gin_json(last, status=500 if "error" in last else 200)
    return await _stream_lines(request, lines, "application/x-ndjson")


async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    read = await _native_request(request)
    if isinstance(read, web.Response):
        return read
    body, model = read
    if not _known(state, model):
        return _error(404, f"model '{model}' not found")
    state.models.remove(_find(state, model))
    return web.Response(status=200)


async def copy(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    if not _known(state, body.get("source", "")):
        return _error(404, f"model '{body.get('source', '')}' not found")
    state.models.append(_canonical(body["destination"]))
    return web.Response(status=200)


async def show(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    model = _model_of(body)
    if not _known(state, model):
        return _error(404, f"model '{model}' not found")
    name = _find(state, model)
    entry = _model_entry(name)
    return _gin_json(
        {
            "license": "LLAMA 3.2 COMMUNITY LICENSE <terms> & conditions",
            "modelfile": f"FROM {name}",  # Ollama names the model as stored, however it was asked for
            "parameters": "stop <|eot_id|>",
            "template": "{{ .Prompt }}",
            "details": entry["details"],
            "model_info": {"general.architecture": "llama"},
            "capabilities": ["completion"],
            "modified_at": entry["modified_at"],
        }
    )


async def embed(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    model = _model_of(body)
    if not _known(state, model):
        return _error(404, f"model '{model}' not found")
    inputs = body.get("input", body.get("prompt", ""))
    inputs = inputs if isinstance(inputs, list) else [inputs]
    vectors = [[round(len(text) / 10, 3), 0.5, -0.25] for text in inputs]
    if request.path == "/api/embeddings":
        return _gin_json({"embedding": vectors[0]})
    return _gin_json({"model": model, "embeddings": vectors, "total_duration": 1000, "load_duration": 10, "prompt_eval_count": 3})


async def tags(request: web.Request) -> web.Response:
    return _gin_json({"models": [_model_entry(m) for m in request.app[STATE_KEY].models]})


async def ps(request: web.Request) -> web.Response:
    models = [{**_model_entry(m), "expires_at": "2026-11-27T11:00:00Z", "size_vram": 2019393189} for m in request.app[STATE_KEY].models[:1]]
    return _gin_json({"models": models})


async def version(request: web.Request) -> web.Response:
    return _gin_json({"version": VERSION})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def openai_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return _openai_error(400, json.loads(body.body)["error"], "invalid_request_error")
    model = _model_of(body)
    if not _known(state, model):
        return _openai_error(404, f"model '{model}' not found", "not_found_error")
    parts = generation(state, int(body.get("max_tokens") or state.token_count))
    base = {"id": "chatcmpl-123", "created": 1764237600, "model": model, "system_fingerprint": "fp_ollama"}
    usage = {"prompt_tokens": 12, "completion_tokens": len(parts), "total_tokens": 12 + len(parts)}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(parts)}
        return _openai_json(
            {**base, "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
        )

    def chunk(delta: dict, finish: str | None) -> dict:
        return {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": p}, None) for p in parts] + [chunk({"role": "assistant", "content": ""}, "stop")]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return await _stream_lines(request, events + ["data: [DONE]\n\n"], "text/event-stream", sse=True)


async def openai_embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return _openai_error(400, "invalid request body", "invalid_request_error")
    model = _model_of(body)
    if not _known(state, model):
        return _openai_error(404, f"model '{model}' not found", "not_found_error")
    inputs = body.get("input", "")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    data = [{"object": "embedding", "embedding": [round(len(t) / 10, 3), 0.5, -0.25], "index": i} for i, t in enumerate(inputs)]
    return _openai_json({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 3, "total_tokens": 3}})


def _sse_event(name: str, data: dict) -> str:
    """Ollama's writeSSE / ResponsesWriter.writeEvent: an event line, then compact JSON."""
    return f"event: {name}\ndata: {_go_json(data).decode()}\n\n"


async def _loading(state: StandinState) -> None:
    """The model loading, before any header is sent (StandinState.first_token_delay)."""
    if state.first_token_delay:
        try:
            await asyncio.sleep(state.first_token_delay)
        except asyncio.CancelledError:
            state.streams_cancelled += 1
            state.cancel_times.append(time.monotonic())
            raise


def _anthropic_error(status: int, message: str) -> web.Response:
    """anthropic.NewError, written by AnthropicWriter.writeError (json.NewEncoder)."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error"}
    body = {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}, "request_id": "req_standin"}
    return _openai_json(body, status=status)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    """Ollama's /v1/messages (middleware/anthropic.go): an Anthropic request turned into
    a chat, its answer written back in Anthropic's shapes, SSE events if "stream": true."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return _anthropic_error(400, json.loads(body.body)["error"])
    model = body.get("model") or ""
    if not model:
        return _anthropic_error(400, "model is required")
    if not _known(state, model):
        return _anthropic_error(404, f"model '{model}' not found")
    await _loading(state)
    parts = tokens(min(int(body.get("max_tokens") or state.token_count), state.token_count))  # Claude Code asks for 32000
    message = {"id": "msg_0123456789abcdef01234567", "type": "message", "role": "assistant", "model": model}
    usage = {"input_tokens": 12, "output_tokens": len(parts)}
    if not body.get("stream"):
        text = "".join(parts)
        return _openai_json({**message, "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": usage})
    events = [
        _sse_event("message_start", {"type": "message_start", "message": {**message, "content": [], "usage": {"input_tokens": 12, "output_tokens": 0}}}),
        _sse_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    events += [_sse_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}) for p in parts]
    events += [
        _sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
        _sse_event("message_stop", {"type": "message_stop"}),
    ]
    return await _stream_lines(request, events, "text/event-stream")


async def openai_responses(request: web.Request) -> web.StreamResponse:
    """Ollama's /v1/responses (middleware/openai.go, openai/responses.go): takes a zstd
    body (Codex compresses), answers a response object or, if "stream": true, its events."""
    state = request.app[STATE_KEY]
    raw = await request.read()
    if request.headers.get("Content-Encoding") == "zstd":
        try:  # only this route inflates, as in Ollama
            raw = zstandard.ZstdDecompressor(max_window_size=8 << 20).decompressobj().decompress(raw)
        except zstandard.ZstdError:
            return _openai_error(400, "failed to decompress zstd body", "invalid_request_error")
    body = await _json_body(request, raw, {"model": go_json.STRING, "stream": go_json.BOOL_POINTER})  # ResponsesRequest.Stream is a *bool
    if isinstance(body, web.Response):
        return _openai_error(400, json.loads(body.body)["error"], "invalid_request_error")
    model = body.get("model") or ""
    if not model:
        return _openai_error(400, "model is required", "invalid_request_error")
    if not _known(state, model):
        return _openai_error(404, f"model '{model}' not found", "not_found_error")
    await _loading(state)
    parts = tokens(min(int(body.get("max_output_tokens") or state.token_count), state.token_count))
    text = "".join(parts)
    response_id, item_id = "resp_123456", "msg_654321"
    usage = {"input_tokens": 12, "output_tokens": len(parts), "total_tokens": 12 + len(parts)}
    done_item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    base = {"id": response_id, "object": "response", "created_at": 1764237600, "model": model}
    if not body.get("stream"):
        return _openai_json({**base, "status": "completed", "output": [done_item], "usage": usage, "completed_at": 1764237601})
    sequence = iter(range(10_000))

    def event(name: str, data: dict) -> str:
        return _sse_event(name, dict(sorted({**data, "type": name, "sequence_number": next(sequence)}.items())))  # a Go map: sorted keys

    events = [
        event("response.created", {"response": {**base, "status": "in_progress", "output": []}}),
        event("response.in_progress", {"response": {**base, "status": "in_progress", "output": []}}),
        event("response.output_item.added", {"output_index": 0, "item": {**done_item, "status": "in_progress", "content": []}}),
        event("response.content_part.added", {"item_id": item_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": ""}}),
    ]
    events += [event("response.output_text.delta", {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": p}) for p in parts]
    events += [
        event("response.output_text.done", {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
        event("response.content_part.done", {"item_id": item_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text}}),
        event("response.output_item.done", {"output_index": 0, "item": done_item}),
        event("response.completed", {"response": {**base, "status": "completed", "output": [done_item], "usage": usage}}),
    ]
    return await _stream_lines(request, events, "text/event-stream")


async def create_or_push(request: web.Request) -> web.StreamResponse:
    """/api/create and /api/push: progress lines, NDJSON unless "stream": false."""
    state = request.app[STATE_KEY]
    read = await _native_request(request)
    if isinstance(read, web.Response):
        return read
    body, model = read
    if request.path == "/api/push":
        if not _known(state, model):
            return _error(404, f"model '{model}' not found")
        lines = [{"status": "retrieving manifest"}, {"status": "pushing manifest"}, {"status": "success"}]
    else:
        base = body.get("from", "")
        if base and not _known(state, base):
            return _error(404, f"model '{base}' not found")
        lines = [{"status": "gathering model components"}, {"status": "writing manifest"}, {"status": "success"}]
        if not _known(state, model):
            state.models.append(_canonical(model))
    if body.get("stream") is False:
        return _gin_json(lines[-1])
    return await _stream_lines(request, lines, "application/x-ndjson")


def _openai_model(name: str) -> dict:
    # Ollama: created is the manifest's mtime, owned_by the namespace of the name as asked.
    return {"id": name, "object": "model", "created": 1761991200, "owned_by": _namespace(name)}


async def openai_models(request: web.Request) -> web.Response:
    data = [_openai_model(m) for m in request.app[STATE_KEY].models] or None  # Go: a nil slice is null
    return _openai_json({"object": "list", "data": data})


async def openai_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if not _known(request.app[STATE_KEY], name):
        return _openai_error(404, f"model '{name}' not found", "not_found_error")
    return _openai_json(_openai_model(name))


def create_standin(state: StandinState | None = None) -> web.Application:
    app = web.Application(middlewares=[record_and_check], client_max_size=1024**3)
    app[STATE_KEY] = state or StandinState()
    r = app.router
    r.add_get("/", root)
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps, allow_head=False)  # gin maps HEAD only where Ollama registers it
    r.add_post("/api/show", show)
    r.add_post("/api/generate", generate_or_chat)
    r.add_post("/api/chat", generate_or_chat)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embed)
    r.add_post("/api/pull", pull)
    r.add_post("/api/copy", copy)
    r.add_post("/api/create", create_or_push)
    r.add_post("/api/push", create_or_push)
    r.add_delete("/api/delete", delete)
    r.add_post("/v1/chat/completions", openai_chat)
    r.add_post("/v1/embeddings", openai_embeddings)
    r.add_post("/v1/responses", openai_responses)
    r.add_post("/v1/messages", anthropic_messages)
    r.add_get("/v1/models", openai_models, allow_head=False)
    r.add_get("/v1/models/{model}", openai_model, allow_head=False)  # gin's :model is one segment
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Ollama stand-in")
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    parser.add_argument("--host", default=host or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(port or 11434))
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    state = StandinState(token_delay=args.token_delay, token_count=args.tokens)
    web.run_app(create_standin(state), host=args.host, port=args.port, handler_cancellation=True, access_log=None, print=None)


if __name__ == "__main__":
    main()
