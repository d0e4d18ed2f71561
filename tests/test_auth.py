"""API keys: proxy.auth rules and the gateway's behaviour with keys set."""

from __future__ import annotations

import hmac
import json
import logging

import pytest

from backend.relay import OllamaRelay
from config import ConfigError, api_keys, load_settings
from proxy import auth
from proxy.app import create_app
from proxy.auth import key_name, presented_key
from proxy.transport import InProcessBackend, UnavailableBackend

KEYS = ("sk-garden-first-key", "sk-garden-second-key")
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"Authorization": "Bearer abc"}, "abc"),
        ({"Authorization": "bearer  abc "}, "abc"),
        ({"X-API-Key": "abc"}, "abc"),
        ({"Authorization": "Basic abc"}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_key_name_checks_every_key_in_constant_time(monkeypatch):
    calls = []
    real_compare = hmac.compare_digest

    def compare(a, b):
        calls.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    assert key_name(KEYS[0], api_keys(KEYS)) == "key-1"
    assert len(calls) == 2  # no early exit on the first match
    assert key_name("nope", api_keys(KEYS)) is None
    assert key_name(None, api_keys(KEYS)) is None
    assert key_name("", ()) is None
    assert key_name("sk-b", api_keys(("alice:sk-a", "bob:sk-b", "sk-c"))) == "bob"


@pytest.fixture
async def keyed_gateway(standin, start_gateway):
    url, _ = standin
    return await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=KEYS)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEYS[0]}"}])
async def test_requests_without_a_valid_key_get_401_in_ollamas_shape(standin, keyed_gateway, http, headers):
    _, state = standin
    async with http.post(keyed_gateway + "/ollama/api/chat", json=CHAT, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        body = await response.json()
        assert set(body) == {"error"} and "API key" in body["error"]
    assert state.seen == []  # nothing reached Ollama


async def test_openai_paths_get_401_in_openais_shape(keyed_gateway, http):
    async with http.get(keyed_gateway + "/ollama/v1/models") as response:
        assert response.status == 401
        error = (await response.json())["error"]
        assert error["type"] == "authentication_error" and error["param"] is None and error["code"] is None


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEYS[1]}"}, {"X-API-Key": KEYS[0]}])
async def test_a_valid_key_passes_and_never_reaches_ollama(standin, keyed_gateway, http, headers):
    _, state = standin
    async with http.post(keyed_gateway + "/ollama/api/chat", json=CHAT, headers=headers) as response:
        assert response.status == 200
    seen = {k.lower(): v for k, v in state.seen[-1].headers.items()}
    assert "authorization" not in seen and "x-api-key" not in seen
    assert all(key not in json.dumps(seen) for key in KEYS)


async def test_a_key_that_is_not_utf8_is_refused_cleanly(standin, keyed_gateway, caplog):
    from tests.conftest import raw_exchange

    request = b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(keyed_gateway, request)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert "Traceback" not in caplog.text


async def test_health_stays_open(keyed_gateway, http):
    async with http.get(keyed_gateway + "/health") as response:
        assert response.status == 200


async def test_keys_never_appear_in_logs(standin, start_gateway, http, caplog):
    caplog.set_level(logging.DEBUG)
    url, state = standin
    state.die_after, state.token_delay = 2, 0.01  # a warning is logged for the broken stream
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=KEYS)
    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}, {"Authorization": "Bearer sk-wrong-guess"}):
        async with http.post(gateway + "/ollama/api/chat", json={**CHAT, "stream": True}, headers=headers) as response:
            await response.read()
    assert caplog.records  # something was logged ...
    for secret in (*KEYS, "sk-wrong-guess"):
        assert secret not in caplog.text  # ... but no key


async def test_the_gateway_logs_the_names_of_its_keys_never_the_keys(start_gateway, caplog):
    caplog.set_level(logging.INFO, "proxy.app")
    await start_gateway(InProcessBackend(OllamaRelay("http://127.0.0.1:9")), gateway_api_keys=("me:sk-a", "partner:sk-b", "sk-c"))
    assert "API keys: me, partner, key-3" in caplog.text
    assert "sk-a" not in caplog.text and "sk-b" not in caplog.text and "sk-c" not in caplog.text


async def test_without_keys_the_gateway_is_open_and_warns(standin, start_gateway, http, caplog):
    url, _ = standin
    caplog.set_level(logging.WARNING)
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)))
    assert "no GATEWAY_API_KEYS set" in caplog.text
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("origin", "allowed", "keys", "may"),
    [
        (None, ("*",), False, True),  # curl, SDKs: no Origin
        ("http://localhost:3000", ("*",), False, True),  # a local chat UI
        ("app://obsidian.md", ("*",), False, True),
        ("https://evil.example", ("*",), False, False),  # any website, keyless: refused
        ("https://evil.example", ("*",), True, True),  # with keys the key decides
        ("https://chat.example", ("https://chat.example",), False, True),
        ("https://evil.example", ("https://chat.example",), False, False),
        ("http://localhost.evil.example", ("*",), False, False),
        ("null", ("*",), False, False),
    ],
)
def test_origin_may_call(origin, allowed, keys, may):
    assert auth.origin_may_call(origin, allowed, keys) is may


@pytest.mark.parametrize(("host", "ok"), [("localhost:8000", True), ("127.0.0.1", True), ("[::1]:8000", True), ("LocalHost", True), ("rebind.evil.example:8000", False), ("10.0.0.5:8000", False)])
def test_is_loopback_host(host, ok):
    assert auth.is_loopback_host(host) is ok


async def test_keyless_gateway_refuses_foreign_origins_like_ollama_does(standin, gateway, http):
    _, state = standin
    async with http.post(gateway + "/ollama/api/chat", json=CHAT, headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 403
        assert "origin not allowed" in (await response.json())["error"]
    async with http.post(gateway + "/ollama/api/chat", json=CHAT, headers={"Origin": "http://localhost:5173"}) as response:
        assert response.status == 200
    assert len(state.seen) == 1


async def test_loopback_only_gateway_refuses_other_host_names(standin, start_gateway, http):
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), loopback_only=True)
    async with http.get(gateway + "/ollama/api/tags", headers={"Host": "rebind.evil.example"}) as response:
        assert response.status == 403
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 200
    async with http.get(gateway + "/health", headers={"Host": "rebind.evil.example"}) as response:
        assert response.status == 200  # nothing to protect there
    assert len(state.seen) == 1


def test_a_key_secret_that_brought_no_keys_fails_closed():
    # On Modal the keys come from the named Secret: a misspelt or empty variable in it must
    # stop the gateway, not open it (found by review).
    settings = load_settings({"GATEWAY_API_KEYS_SECRET": "garden-keys", "API_KEYS": "me:sk-1"})
    with pytest.raises(ConfigError, match="GATEWAY_API_KEYS_SECRET='garden-keys' names a Modal Secret that holds no GATEWAY_API_KEYS"):
        create_app(UnavailableBackend("unused"), settings)
