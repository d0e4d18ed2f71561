"""The official clients, pointed at the gateway: `ollama`, `openai`, and `curl -N`."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator

import ollama
import openai
import pytest

from backend.relay import OllamaRelay
from proxy.transport import InProcessBackend
from tests.ollama_standin import tokens

KEY = "sk-garden-test"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
async def keyed_gateway(standin, start_gateway) -> str:
    url, _ = standin
    return await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,))


@pytest.fixture
def ollama_client(keyed_gateway, ollama_clients) -> ollama.AsyncClient:
    return ollama_clients(keyed_gateway + "/ollama", headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
async def openai_client(keyed_gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=keyed_gateway + "/ollama/v1", api_key=KEY, max_retries=0)
    yield client
    await client.close()


async def test_ollama_chat_streaming_and_not(ollama_client):
    parts = [part async for part in await ollama_client.chat(model="llama3.2", messages=MESSAGES, stream=True)]
    assert [p.message.content for p in parts[:-1]] == tokens(8)
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == 8
    whole = await ollama_client.chat(model="llama3.2", messages=MESSAGES)
    assert whole.message.content == "".join(tokens(8)) and whole.done


async def test_ollama_generate_streaming_and_not(ollama_client):
    parts = [part async for part in await ollama_client.generate(model="llama3.2", prompt="hi", stream=True)]
    assert "".join(p.response for p in parts) == "".join(tokens(8))
    assert parts[-1].context == [1, 2, 3]
    whole = await ollama_client.generate(model="llama3.2", prompt="hi")
    assert whole.response == "".join(tokens(8))


async def test_ollama_list_show_embed(ollama_client):
    listed = await ollama_client.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "glm-4.7-flash:q8_0"]
    shown = await ollama_client.show("llama3.2")
    assert shown.modelfile == "FROM llama3.2:latest" and shown.details.family == "llama"
    embedded = await ollama_client.embed(model="llama3.2", input=["a", "abc"])
    assert embedded.embeddings == [[0.1, 0.5, -0.25], [0.3, 0.5, -0.25]]


async def test_ollama_pull_with_progress_then_delete(standin, ollama_client):
    _, state = standin
    progress = [p async for p in await ollama_client.pull("qwen3:0.6b", stream=True)]
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    completed = [p.completed for p in progress if p.total]
    assert completed == sorted(completed) and completed[-1] == progress[1].total
    assert "qwen3:0.6b" in [m.model for m in (await ollama_client.list()).models]
    await ollama_client.delete("qwen3:0.6b")
    assert "qwen3:0.6b" not in [m.model for m in (await ollama_client.list()).models]


async def test_ollama_unknown_model_raises_response_error_404(ollama_client):
    with pytest.raises(ollama.ResponseError) as info:
        await ollama_client.chat(model="ghost", messages=MESSAGES)
    assert info.value.status_code == 404 and info.value.error == "model 'ghost' not found"
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await ollama_client.chat(model="ghost", messages=MESSAGES, stream=True):
            pass
    assert info.value.status_code == 404


async def test_ollama_client_without_the_key_is_refused(keyed_gateway, ollama_clients):
    with pytest.raises(ollama.ResponseError) as info:
        await ollama_clients(keyed_gateway + "/ollama").list()
    assert info.value.status_code == 401


async def test_openai_streaming_chat(openai_client):
    stream = await openai_client.chat.completions.create(
        model="llama3.2", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert text == tokens(8)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 8


async def test_openai_models_and_embeddings(openai_client):
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == ["llama3.2:latest", "glm-4.7-flash:q8_0"]
    one = await openai_client.models.retrieve("llama3.2:latest")
    assert one.id == "llama3.2:latest"
    embeddings = await openai_client.embeddings.create(model="llama3.2", input=["a", "abc"])
    assert [e.embedding for e in embeddings.data] == [[0.1, 0.5, -0.25], [0.3, 0.5, -0.25]]


async def test_openai_wrong_key_is_401_authentication_error(keyed_gateway):
    client = openai.AsyncOpenAI(base_url=keyed_gateway + "/ollama/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.models.list()
    await client.close()
    assert info.value.status_code == 401
    assert info.value.body["type"] == "authentication_error"


async def test_openai_unknown_model_is_not_found(openai_client):
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(model="ghost", messages=MESSAGES)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_prints_tokens_as_they_come(standin, keyed_gateway):
    # The stand-in sends each next line only after curl has printed the previous one.
    _, state = standin
    state.gate = asyncio.Queue()
    body = json.dumps({"model": "llama3.2", "messages": MESSAGES})
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--fail-with-body", keyed_gateway + "/ollama/api/chat",
        "-H", f"Authorization: Bearer {KEY}", "-d", body,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    printed = []
    while line := await asyncio.wait_for(curl.stdout.readline(), timeout=10):
        printed.append(json.loads(line))
        state.gate.put_nowait(True)
    assert await curl.wait() == 0
    assert [p["message"]["content"] for p in printed[:-1]] == tokens(8)
    assert printed[-1]["done"] is True
