"""Sharing a garden: named keys, token accounting, model allowlists and limits
(proxy.policy), with the real ollama and openai clients against the stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import aiohttp
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.relay import OllamaRelay
from config import ConfigError, KeyPolicy, load_settings
from proxy import forward
from proxy.policy import Limits, ModelRules, filter_listing, reported_tokens
from proxy.transport import InProcessBackend
from tests.conftest import scraped_tokens

KEYS = ("alice:sk-alice-secret", "bob:sk-bob-secret", "sk-bare-secret")
POLICY = (
    ("bob", KeyPolicy(models=("llama3.2",), max_streams=1)),
    ("*", KeyPolicy()),
)
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def shared(standin, start_gateway):
    url, state = standin
    gateway = await start_gateway(
        InProcessBackend(OllamaRelay(url)), gateway_api_keys=KEYS, gateway_key_policy=POLICY, ollama_model_list=("llama3.2", "glm-4.7-flash:q8_0")
    )
    return gateway, state


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def tokens(gateway: str) -> dict[tuple[str, str, str], float]:
    return await scraped_tokens(gateway, auth("sk-alice-secret"))


async def test_tokens_are_counted_per_key_name_and_model_from_what_ollama_reports(shared, caplog, ollama_clients):
    gateway, state = shared
    caplog.set_level(logging.INFO, logger="proxy.access")
    alice = ollama_clients(gateway + "/ollama", headers=auth("sk-alice-secret"))
    parts = [p async for p in await alice.chat(model="llama3.2", messages=MESSAGES, stream=True)]  # 8 tokens, streamed
    assert parts[-1].eval_count == 8 and parts[-1].prompt_eval_count == 12
    whole = await alice.generate(model="glm-4.7-flash:q8_0", prompt="hi", stream=False, options={"num_predict": 5})
    assert whole.eval_count == 5
    bare = openai.AsyncOpenAI(base_url=gateway + "/ollama/v1", api_key="sk-bare-secret")
    await bare.chat.completions.create(model="llama3.2", messages=MESSAGES, max_tokens=3)  # usage in the body
    stream = await bare.chat.completions.create(model="llama3.2", messages=MESSAGES, max_tokens=4, stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage async for chunk in stream if chunk.usage]
    assert usage[0].completion_tokens == 4
    async for _ in await bare.chat.completions.create(model="llama3.2", messages=MESSAGES, max_tokens=6, stream=True):
        pass  # no usage asked for: none reported, none counted
    await bare.close()
    counted = await tokens(gateway)
    assert counted == {  # one label per model, however the client spelled it
        ("alice", "llama3.2:latest", "prompt"): 12, ("alice", "llama3.2:latest", "completion"): 8,
        ("alice", "glm-4.7-flash:q8_0", "prompt"): 12, ("alice", "glm-4.7-flash:q8_0", "completion"): 5,
        ("key-3", "llama3.2:latest", "prompt"): 24, ("key-3", "llama3.2:latest", "completion"): 7,
    }  # fmt: skip
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert lines[0]["key"] == "alice" and (lines[0]["prompt_tokens"], lines[0]["completion_tokens"]) == (12, 8)
    assert not any("secret" in r.getMessage() for r in caplog.records)  # names, never keys


async def test_an_aborted_stream_counts_nothing_and_breaks_nothing(shared, ollama_clients):
    gateway, state = shared
    state.token_delay = 0.02
    async with aiohttp.ClientSession() as http:
        response = await http.post(gateway + "/ollama/api/chat", json={"model": "llama3.2", "messages": MESSAGES}, headers=auth("sk-alice-secret"))
        await response.content.readline()
        response.close()
    await asyncio.sleep(0.1)
    assert await tokens(gateway) == {}
    state.token_delay = 0.0
    parts = [p async for p in await ollama_clients(gateway + "/ollama", headers=auth("sk-alice-secret")).chat(model="llama3.2", messages=MESSAGES, stream=True)]
    assert parts[-1].done and (await tokens(gateway))[("alice", "llama3.2:latest", "completion")] == 8


async def test_a_model_outside_the_keys_allowlist_is_403_before_ollama_sees_it(shared, ollama_clients):
    gateway, state = shared
    bob = ollama_clients(gateway + "/ollama", headers=auth("sk-bob-secret"))
    with pytest.raises(ollama.ResponseError) as info:
        await bob.chat(model="glm-4.7-flash:q8_0", messages=MESSAGES)
    assert info.value.status_code == 403 and info.value.error == "the key 'bob' may not use the model 'glm-4.7-flash:q8_0'"
    sdk = openai.AsyncOpenAI(base_url=gateway + "/ollama/v1", api_key="sk-bob-secret")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk.chat.completions.create(model="glm-4.7-flash:q8_0", messages=MESSAGES)
    assert denied.value.body["type"] == "permission_error"
    for path, body in (("/api/pull", {"model": "qwen3:8b"}), ("/api/show", {"model": "glm-4.7-flash:q8_0"})):
        async with aiohttp.ClientSession() as http, http.post(gateway + "/ollama" + path, json=body, headers=auth("sk-bob-secret")) as response:
            assert response.status == 403
    assert state.seen == []
    assert (await bob.chat(model="library/llama3.2:latest", messages=MESSAGES)).done  # by Ollama's name rules
    await sdk.close()


async def test_listings_show_a_key_only_its_models(shared, ollama_clients):
    gateway, _ = shared
    bob = ollama_clients(gateway + "/ollama", headers=auth("sk-bob-secret"))
    assert [m.model for m in (await bob.list()).models] == ["llama3.2:latest"]
    assert [m.model for m in (await bob.ps()).models] == ["llama3.2:latest"]
    sdk = openai.AsyncOpenAI(base_url=gateway + "/ollama/v1", api_key="sk-bob-secret")
    assert [m.id for m in (await sdk.models.list()).data] == ["llama3.2:latest"]
    await sdk.close()
    alice = ollama_clients(gateway + "/ollama", headers=auth("sk-alice-secret"))
    assert len((await alice.list()).models) == 2  # no allowlist: everything, Ollama's bytes


async def test_the_next_concurrent_stream_over_the_limit_gets_429_and_the_count_recovers(shared):
    gateway, state = shared
    state.token_delay = 0.05
    async with aiohttp.ClientSession() as http:
        first = await http.post(gateway + "/ollama/api/chat", json={"model": "llama3.2", "messages": MESSAGES}, headers=auth("sk-bob-secret"))
        await first.content.readline()
        seen = len(state.seen)
        for path, body in (("/api/chat", {"model": "llama3.2", "messages": MESSAGES}), ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES})):
            async with http.post(gateway + "/ollama" + path, json=body, headers=auth("sk-bob-secret")) as second:
                assert second.status == 429 and second.headers["Retry-After"] == "1"
                error = (await second.json())["error"]
        assert error["code"] == "rate_limit_exceeded" and "1 requests in flight" in error["message"]  # OpenAI's shape on /v1
        assert len(state.seen) == seen  # nothing reached Ollama
        await first.read()
        first.close()
        async with http.get(gateway + "/ollama/api/tags", headers=auth("sk-bob-secret")) as third:
            assert third.status == 200  # the first ended: a place again
        async with http.post(gateway + "/ollama/api/chat", json={"model": "llama3.2", "messages": MESSAGES}, headers=auth("sk-alice-secret")) as other:
            assert other.status == 200  # another key has its own count


async def test_requests_over_the_rate_get_429_with_retry_after_and_recover(standin, start_gateway, monkeypatch):
    monkeypatch.setattr(Limits, "WINDOW", 1.0)
    url, state = standin
    policy = (("bob", KeyPolicy(requests_per_minute=4)),)
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=KEYS, gateway_key_policy=policy)
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(6):
            async with http.get(gateway + "/ollama/api/version", headers=auth("sk-bob-secret")) as response:
                statuses.append(response.status)
                retry = response.headers.get("Retry-After")
        assert statuses == [200, 200, 200, 200, 429, 429] and retry == "1"
        assert [s.path for s in state.seen].count("/api/version") == 4
        await asyncio.sleep(1.05)
        async with http.get(gateway + "/ollama/api/version", headers=auth("sk-bob-secret")) as response:
            assert response.status == 200


# --- The pure parts ---------------------------------------------------------------------


def test_reported_tokens_reads_only_a_final_report():
    final = json.dumps({"done": True, "prompt_eval_count": 12, "eval_count": 8}).encode() + b"\n"
    assert reported_tokens(b'{"message":{"content":"x"},"done":false}\n' + final) == (12, 8)
    assert reported_tokens(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\ndata: [DONE]\n\n') == (3, 2)
    assert reported_tokens(b'{"message":{"content":"x"},"done":false}\n') is None  # cut short: nothing
    assert reported_tokens(json.dumps({"response": 'quote "prompt_eval_count": 99, "eval_count": 99'}).encode()) is None  # escaped in JSON


def test_listings_are_filtered_in_their_own_shape():
    rules = ModelRules(("llama3.2",))
    tags = json.dumps({"models": [{"name": "llama3.2:latest"}, {"name": "glm:q8"}]}).encode()
    assert filter_listing("/api/tags", tags, rules) == b'{"models":[{"name":"llama3.2:latest"}]}'
    v1 = json.dumps({"object": "list", "data": [{"id": "glm:q8"}, {"id": "llama3.2:latest"}]}).encode()
    assert filter_listing("/v1/models", v1, rules) == b'{"object":"list","data":[{"id":"llama3.2:latest"}]}\n'
    assert filter_listing("/api/tags", b"not json", rules) is None
    assert ModelRules(None).allows("anything") and not ModelRules(()).allows("llama3.2")


def test_named_keys_and_policies_are_validated_at_import():
    settings = load_settings({"GATEWAY_API_KEYS": "alice:sk-a,sk-b", "GATEWAY_KEY_POLICY": '{"alice": {"models": ["llama3.2"]}, "*": {"max_streams": 2}}'})
    assert dict(settings.gateway_key_policy) == {"alice": KeyPolicy(models=("llama3.2",)), "*": KeyPolicy(max_streams=2)}
    for env, message in (
        ({"GATEWAY_API_KEYS": "a:1,a:2"}, "the name 'a' is given to two keys"),
        ({"GATEWAY_API_KEYS": "alice:sk-a", "GATEWAY_KEY_POLICY": '{"carol": {}}'}, "'carol' is not the name of a key"),
        ({"GATEWAY_API_KEYS": "alice:sk-a", "GATEWAY_KEY_POLICY": '{"alice": {"rpm": 5}}'}, "must be an object with models"),
        ({"GATEWAY_API_KEYS": "alice:sk-a", "GATEWAY_KEY_POLICY": '{"alice": {"max_streams": 0}}'}, "at least 1"),
        ({"GATEWAY_KEY_POLICY": "{nope"}, "GATEWAY_KEY_POLICY is not JSON"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(env)


# --- What an independent review of this found -----------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"Model": "glm-4.7-flash:q8_0", "messages": MESSAGES}),  # Go matches keys without regard to case
        ("/api/chat", {"model": "llama3.2", "MODEL": "glm-4.7-flash:q8_0", "messages": MESSAGES}),  # and the last one wins
        ("/api/chat", {"model": "glm-4.7-flash:q8_0", "messages": [{"role": "user", "content": "x" * 70_000, "model": "llama3.2"}]}),
        ("/api/chat", {"model": "glm-4.7-flash:q8\u005f0", "messages": [{"role": "user", "content": "x" * 70_000}]}),
        ("/api/delete", {"name": "glm-4.7-flash:q8_0", "pad": "x" * 70_000}),
        ("/api/copy", {"source": "llama3.2", "destination": "glm-4.7-flash:q8_0"}),  # would overwrite a forbidden model
        ("/api/create", {"model": "llama3.2", "from": "glm-4.7-flash:q8_0"}),  # would point an allowed name at it
        ("/api/chat", {"messages": MESSAGES}),  # names no model the gateway can read: refused, not guessed
    ],
)
async def test_no_spelling_gets_a_model_past_the_allowlist(shared, path, body):
    gateway, state = shared
    raw = json.dumps(body).replace("\\\\u005f", "\\u005f").encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway + "/ollama" + path, data=raw, headers={**auth("sk-bob-secret"), "Content-Type": "application/json"}) as response:
            assert response.status == 403, await response.text()
    assert state.seen == []


async def test_invalid_utf8_does_not_hide_the_model(shared):
    gateway, state = shared
    raw = b'{"model": "glm-4.7-flash:q8_0", "messages": [{"role": "user", "content": "hi \xff"}]}'
    async with aiohttp.ClientSession() as http, http.post(gateway + "/ollama/api/chat", data=raw, headers=auth("sk-bob-secret")) as response:
        assert response.status == 403
    assert state.seen == []


async def test_metrics_are_for_keys_without_an_allowlist_and_head_tags_is_filtered_too(shared):
    gateway, _ = shared
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway + "/metrics", headers=auth("sk-bob-secret")) as response:
            assert response.status == 403
        async with http.get(gateway + "/metrics", headers=auth("sk-alice-secret")) as response:
            assert response.status == 200
        async with http.get(gateway + "/ollama/api/tags", headers=auth("sk-bob-secret")) as response:
            listed = await response.read()
        async with http.head(gateway + "/ollama/api/tags", headers=auth("sk-bob-secret")) as response:
            assert response.status == 200 and int(response.headers["Content-Length"]) == len(listed)


def test_embeddings_responses_and_messages_report_tokens_too():
    assert reported_tokens(b'{"model":"m","embeddings":[[0.1]],"total_duration":1,"prompt_eval_count":3}') == (3, 0)
    assert reported_tokens(b'{"object":"list","usage":{"prompt_tokens":4,"total_tokens":4}}\n') == (4, 0)
    assert reported_tokens(b'{"usage":{"input_tokens":5,"output_tokens":6}}') == (5, 6)


def test_policy_model_names_are_checked():
    with pytest.raises(ConfigError, match="'not a model' \\(for 'alice'\\) is not an Ollama model name"):
        load_settings({"GATEWAY_API_KEYS": "alice:sk-a", "GATEWAY_KEY_POLICY": '{"alice": {"models": ["not a model"]}}'})


# --- A key limited to one model uses only that model (issue 17) ---------------------------
# The stand-in decodes bodies as Go's encoding/json does (tests/go_json.py): what it
# records is what Ollama would have run, copied or deleted.

PARTNER = "sk-partner-secret"
OWNER = "sk-owner-secret"


@pytest.fixture
async def garden_with_a_partner(standin, start_gateway):
    url, state = standin
    state.models[:] = ["tiny:latest", "secret-b:latest", "other-c:latest"]
    gateway = await start_gateway(
        InProcessBackend(OllamaRelay(url)),
        gateway_api_keys=(f"owner:{OWNER}", f"partner:{PARTNER}"),
        gateway_key_policy=(("partner", KeyPolicy(models=("tiny",))),),
        ollama_model_list=("tiny", "secret-b"),
    )
    return gateway, state


SMUGGLED = [
    ("POST", "/api/chat", b'{"model":"secret-b","model":null,"name":"tiny","messages":[{"role":"user","content":"hi"}]}'),
    ("POST", "/api/generate", b'{"model":"secret-b","model":null,"name":"tiny","prompt":"hi"}'),
    ("POST", "/v1/chat/completions", b'{"model":"secret-b","model":null,"name":"tiny","messages":[{"role":"user","content":"hi"}]}'),
    ("POST", "/api/pull", b'{"model":"secret-b","model":null,"name":"tiny"}'),
    ("DELETE", "/api/delete", b'{"model":"secret-b","model":null,"name":"tiny"}'),
    ("POST", "/api/copy", b'{"source":"tiny","destination":"secret-b","destination":null}'),
    ("POST", "/api/create", b'{"model":"tiny","from":"secret-b","from":null}'),
    ("POST", "/api/copy", '{"source":"tiny","destination":"secret-b","de\ufb06ination":"tiny"}'.encode()),
    ("POST", "/api/copy", '{"source":"tiny","destination":"secret-b","de\ufb05ination":"tiny"}'.encode()),
    ("POST", "/api/chat", b'{"model":"tiny","MODEL":"secret-b","messages":[]}'),
    ("POST", "/api/chat", b'{"model":5,"model":"tiny","messages":[]}'),  # Ollama's 400: still not decided on
]


@pytest.mark.parametrize(("method", "path", "body"), SMUGGLED)
async def test_a_limited_key_cannot_smuggle_another_model(garden_with_a_partner, http, method, path, body):
    gateway, state = garden_with_a_partner
    seen = len(state.seen)
    async with http.request(method, gateway + "/ollama" + path, data=body, headers={**auth(PARTNER), "Content-Type": "application/json"}) as response:
        assert response.status in (400, 403), await response.text()
        error = (await response.json())["error"]
    assert (error["message"] if path.startswith("/v1/") else error)
    assert len(state.seen) == seen  # nothing reached Ollama
    assert state.models == ["tiny:latest", "secret-b:latest", "other-c:latest"]


async def test_what_ollama_reads_is_what_the_limited_key_gets(garden_with_a_partner, http):
    gateway, state = garden_with_a_partner
    body = b'{"model":"secret-b","model":null,"MODEL":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false}'
    async with http.post(gateway + "/ollama/api/chat", data=body, headers=auth(PARTNER)) as response:
        assert response.status == 200
        assert (await response.json())["model"] == "tiny"  # the stand-in ran what Go read: tiny


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/images/generations"), ("POST", "/v1/images/edits"), ("POST", "/v1/audio/transcriptions"),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64), ("POST", "/api/blobs/sha256:" + "0" * 64),
        ("POST", "/api/me"), ("POST", "/api/signout"), ("DELETE", "/api/user/keys/abc"),
        ("POST", "/api/experimental/web_search"), ("POST", "/api/experimental/web_fetch"), ("GET", "/api/status"),
        ("POST", "/api/some-future-route"), ("POST", "/api/%63hat/../me"),
    ],
)  # fmt: skip
async def test_a_limited_key_may_use_only_the_routes_whose_model_the_gateway_reads(garden_with_a_partner, http, method, path):
    gateway, state = garden_with_a_partner
    seen = len(state.seen)
    async with http.request(method, gateway + "/ollama" + path, json={"model": "tiny"}, headers=auth(PARTNER)) as response:
        assert response.status == 403
    assert len(state.seen) == seen
    async with http.request(method, gateway + "/ollama" + path, json={"model": "tiny"}, headers=auth(OWNER)) as response:
        assert response.status != 403  # the owner's key reaches Ollama, which answers as it will
    assert len(state.seen) == seen + 1


async def test_a_limited_key_still_lists_chats_and_reads_its_model(garden_with_a_partner, http, ollama_clients):
    gateway, _ = garden_with_a_partner
    partner = ollama_clients(gateway + "/ollama", headers=auth(PARTNER))
    assert [m.model for m in (await partner.list()).models] == ["tiny:latest"]
    assert (await partner.show("tiny")).modelfile is not None
    assert (await partner.chat(model="tiny", messages=MESSAGES)).message.content
    assert (await partner.embed(model="tiny", input="x")).embeddings
    async with http.get(gateway + "/ollama/api/version", headers=auth(PARTNER)) as response:
        assert response.status == 200


async def test_token_labels_are_the_model_that_ran_and_never_a_new_series(garden_with_a_partner, http):
    gateway, _ = garden_with_a_partner
    for n in range(28):
        body = {"model": f"junk-{n}", "MODEL": "tiny", "messages": MESSAGES, "stream": False}
        async with http.post(gateway + "/ollama/api/chat", data=json.dumps(body), headers=auth(OWNER)) as response:
            assert response.status == 200
    async with http.post(gateway + "/ollama/api/chat", json={"model": "other-c", "messages": MESSAGES, "stream": False}, headers=auth(OWNER)) as response:
        assert response.status == 200  # in Ollama's store, but neither configured nor in a catalog
    async with aiohttp.ClientSession() as session, session.get(gateway + "/metrics", headers=auth(OWNER)) as response:
        text = await response.text()
    labels = {(s.labels["key"], s.labels["model"]) for f in text_string_to_metric_families(text) for s in f.samples if s.name == "garden_tokens_total"}
    assert labels == {("owner", "tiny:latest"), ("owner", "other")}


async def test_a_large_body_is_read_off_the_event_loop(garden_with_a_partner, http, monkeypatch):
    # Reading a large body costs CPU in proportion to it: in a worker thread, so health
    # checks and every other stream go on meanwhile (bench/BODY_MEMORY.md has the figures).
    threads = []
    real = forward.read_request

    def recording(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(forward, "read_request", recording)
    gateway, _ = garden_with_a_partner
    small = {"model": "tiny", "messages": MESSAGES, "stream": False}
    large = {**small, "pad": "x" * (2 * forward.READ_INLINE_LIMIT)}
    for body in (small, large):
        async with http.post(gateway + "/ollama/api/chat", json=body, headers=auth(PARTNER)) as response:
            assert response.status == 200
    assert threads[0] == threading.current_thread().name and threads[1].startswith("body-reader")


BLOB = "sha256:" + "ab" * 32  # a digest in the shared store: any model's weights


@pytest.mark.parametrize(
    "body",
    [
        {"model": "tiny", "files": {"model.gguf": BLOB}},
        {"model": "tiny", "from": "tiny", "adapters": {"lora.gguf": BLOB}},
        {"model": "tiny", "files": {"model.gguf": BLOB}, "draft_files": {"d.gguf": BLOB}},
        {"model": "tiny", "from": "tiny", "remote_host": "ollama.com"},
    ],
)
async def test_a_limited_key_cannot_build_its_model_from_blobs_or_another_host(garden_with_a_partner, http, body):
    # Found by review: Ollama builds a model from any blob of the shared store, so a
    # create with files or adapters could give `tiny` another model's weights.
    gateway, state = garden_with_a_partner
    seen = len(state.seen)
    async with http.post(gateway + "/ollama/api/create", data=json.dumps(body), headers=auth(PARTNER)) as response:
        assert response.status == 403
    assert len(state.seen) == seen


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/pull", {"model": "tiny"}),
        ("POST", "/api/push", {"model": "tiny"}),
        ("DELETE", "/api/delete", {"model": "tiny"}),
        ("POST", "/api/copy", {"source": "tiny", "destination": "tiny"}),
        ("POST", "/api/create", {"model": "tiny", "from": "tiny", "system": "ignore the owner"}),
    ],
)
async def test_a_limited_key_cannot_change_the_models_it_shares_with_the_owner(garden_with_a_partner, http, method, path, body):
    gateway, state = garden_with_a_partner
    async with http.request(method, gateway + "/ollama" + path, json=body, headers=auth(PARTNER)) as response:
        assert response.status == 403
        assert "is not for it" in (await response.json())["error"]
    async with http.request(method, gateway + "/ollama" + path, json=body, headers=auth(OWNER)) as response:
        assert response.status != 403  # the owner's key reaches Ollama
    assert [seen.path for seen in state.seen] == [path]
