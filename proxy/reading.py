"""What Ollama's handler will read from a request: the one reading every rule uses.

The allowlist, the pool router, token labels, stream detection and the catalog's
`/api/show` all decide on what Ollama will *do*, and that is decided by its Go code:
gin's `ShouldBindJSON`, i.e. `json.NewDecoder(body).Decode(&req)` into the handler's
struct (server/routes.go, middleware/openai.go, middleware/anthropic.go). So the body is
read here as `encoding/json` reads it, for the fields a rule needs:

- only the top-level object's keys; a key names a field if it is the field's name, or
  equal to it under Go's simple case folding (`ſ` is `s`, `K` is `k`; `ﬆ` is not `st`);
- every occurrence sets the field again: the last one wins;
- `null` leaves a string or bool field as it was, and resets a `*bool` (`stream` of the
  native routes and of `/v1/responses`) to unset;
- invalid UTF-8 inside strings becomes U+FFFD, one per byte, as are lone surrogates;
- a read field of the wrong type, a body that is not a JSON object, or bad syntax at
  the top level is a 400 from Ollama, for certain (`Reading.error`);
- whatever follows the first JSON value is ignored (a Decoder reads one value).

The OpenAI and Anthropic routes are also read by Ollama's cloud pass-through, which
looks up the exact key `model` (a Go map: case-sensitive, last wins) and sends a cloud
model's request elsewhere: a model named that way is one more model the request uses.

Bounded cost: nested values (messages, tools, images) are skipped by a regular
expression, window by window, never built as objects, so a body costs memory in
proportion to its top-level keys, whatever it holds, and no single step holds the
interpreter for long (the gateway reads large bodies in a worker thread). Nesting deeper
than `MAX_DEPTH` is not followed: such a body is unreadable here (`models` is None), and
rules that need its model refuse it.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

# Go types of the struct fields the gateway's rules read.
STRING = "string"
BOOL = "bool"  # null keeps the value (false unless set)
BOOL_POINTER = "*bool"  # null resets it to unset (Ollama then streams)
MAP = "map"  # a JSON object; null resets it


@dataclass(frozen=True)
class Handler:
    """What one Ollama handler decodes from its body, as far as the gateway's rules go."""

    fields: dict[str, str]  # JSON name -> Go type
    # Each group names one model: its first non-empty field (Go's cmp.Or(req.Model, req.Name)).
    models: tuple[tuple[str, ...], ...] = (("model",),)
    cloud_pass_through: bool = False  # Ollama's cloudPassthroughMiddleware reads an exact "model" key first
    # Fields that, set, make the request use weights the gateway cannot name: blobs by
    # digest (any model's, in the shared store) or another host's model.
    unnamed_sources: tuple[str, ...] = ()


_MODEL = {"model": STRING}
_INFERENCE = {"model": STRING, "stream": BOOL_POINTER}
_BY_NAME = {"model": STRING, "name": STRING, "stream": BOOL_POINTER}

# (method, route) -> its handler's fields, from Ollama's route table (server/routes.go) and
# request types (api/types.go, openai/, anthropic/). These are the routes a key limited to
# some models may use: the gateway can tell which models each one uses.
HANDLERS: dict[tuple[str, str], Handler] = {
    ("POST", "/api/chat"): Handler(_INFERENCE),
    ("POST", "/api/generate"): Handler(_INFERENCE),
    ("POST", "/api/embed"): Handler(_MODEL),
    ("POST", "/api/embeddings"): Handler(_MODEL),
    ("POST", "/api/show"): Handler({"model": STRING, "name": STRING, "verbose": BOOL}, (("model", "name"),)),
    ("POST", "/api/pull"): Handler(_BY_NAME, (("model", "name"),)),
    ("POST", "/api/push"): Handler(_BY_NAME, (("model", "name"),)),
    ("DELETE", "/api/delete"): Handler({"model": STRING, "name": STRING}, (("model", "name"),)),
    ("POST", "/api/create"): Handler(
        {**_BY_NAME, "from": STRING, "files": MAP, "adapters": MAP, "draft_files": MAP, "remote_host": STRING},
        (("model", "name"), ("from",)),
        unnamed_sources=("files", "adapters", "draft_files", "remote_host"),
    ),
    ("POST", "/api/copy"): Handler({"source": STRING, "destination": STRING}, (("source",), ("destination",))),
    ("POST", "/v1/chat/completions"): Handler({"model": STRING, "stream": BOOL}, cloud_pass_through=True),
    ("POST", "/v1/completions"): Handler({"model": STRING, "stream": BOOL}, cloud_pass_through=True),
    ("POST", "/v1/embeddings"): Handler(_MODEL, cloud_pass_through=True),
    ("POST", "/v1/responses"): Handler(_INFERENCE, cloud_pass_through=True),
    ("POST", "/v1/messages"): Handler({"model": STRING, "stream": BOOL}, cloud_pass_through=True),
}
MODEL_IN_PATH = "/v1/models/"  # GET /v1/models/{model}: gin's :model is one segment


class Reading(NamedTuple):
    """What Ollama's handler will read from one request."""

    is_object: bool = False  # the body decodes as a JSON object
    # The models the request uses, in order (a copy's source first); () if it names none;
    # None if the gateway cannot tell (then every rule that needs a model refuses).
    models: tuple[str, ...] | None = ()
    stream: bool | None = None  # None: unset (native routes then stream, OpenAI ones do not)
    verbose: bool = False  # /api/show
    other_keys: bool = False  # keys beyond the fields read (they may change an answer)
    error: str | None = None  # why Ollama will answer 400, when that is certain

    @property
    def model(self) -> str | None:
        """The model the request is about (for pools, the log and token labels)."""
        return self.models[0] if self.models else None


NOTHING = Reading()


def _model_in_path(method: str, route: str) -> str | None:
    """The model of `GET /v1/models/{model}`, or None for any other request."""
    if method != "GET" or not route.startswith(MODEL_IN_PATH):
        return None
    model = route[len(MODEL_IN_PATH) :]
    return None if "/" in model else model


def reads_a_model(method: str, route: str) -> bool:
    """Does Ollama's handler for this request use a model the gateway can read?"""
    return (method, route) in HANDLERS or _model_in_path(method, route) is not None


def read_request(method: str, route: str, body: bytes) -> Reading:
    """What Ollama's handler for (`method`, `route`) will read from `body`. Pure."""
    in_path = _model_in_path(method, route)
    if in_path is not None:
        return Reading(models=(in_path,))
    handler = HANDLERS.get((method, route))
    if handler is None:
        return NOTHING  # not a handler that reads a model from its body
    return read_body(handler, body)


# --- Go's encoding/json, for the top level of one object --------------------------------

# Go folds a key by simple case folding: ASCII letters, plus the two runes whose fold
# orbit holds one (U+017F with s, U+212A with k). Checked against Go's own foldName in
# tests/test_reading.py.
_GO_FOLD = {**{c: c - 32 for c in range(ord("a"), ord("z") + 1)}, 0x017F: ord("S"), 0x212A: ord("K")}


def go_fold(key: str) -> str:
    """A key as Go's encoding/json compares it with a field name (`foldName`)."""
    return key.translate(_GO_FOLD)


def _go_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    # Go's utf8.DecodeRune gives one U+FFFD per byte of an invalid sequence.
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error("go-replace", _go_replace)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_WS = rb"[ \t\n\r]*+"
_WHITESPACE = re.compile(_WS)
# Top-level strings are checked as strictly as Go's scanner checks them.
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][-+]?[0-9]++)?"
_SCALAR = rb"(?:(?P<string>" + _STRING + rb")|(?P<bool>true|false)|(?P<null>null)|" + _NUMBER + rb")"
_SCALAR_BARE = rb"(?:" + _STRING + rb"|true|false|null|" + _NUMBER + rb")"  # the same, without groups
_KEY = re.compile(_WS + rb"(?P<key>" + _STRING + rb")" + _WS + rb":" + _WS)  # a key and its colon
# The usual pair in one match: a key, a value that is not nested, and what follows it.
_SCALAR_PAIR = re.compile(_KEY.pattern + _SCALAR + _WS + rb"(?P<next>[,}])")
_SCALAR_ALONE = re.compile(_SCALAR)
_AFTER_VALUE = re.compile(_WS + rb"(?P<next>[,}])")
MAX_DEPTH = 64  # nesting followed inside one top-level value (Go allows 10,000)


_FLAT = rb'[^\[\]{}"]++|"(?:[^"\\]++|\\.)*+"'  # what is not a bracket: runs of anything else, and strings
_STRING_INSIDE = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)  # a string's characters, up to its closing quote


def _nested_pattern(depth: int) -> bytes:
    """One array or object, nested at most `depth` deep."""
    pattern = rb"[\[{](?:" + _FLAT + rb")*+[\]}]"
    for _ in range(depth - 1):
        pattern = rb"[\[{](?:" + _FLAT + rb"|" + pattern + rb")*+[\]}]"
    return pattern


# Whole items inside an array or object (values, keys, commas, colons), their own nesting
# at most 0..8 deep. String-aware bracket matching: for a body Go accepts, a value ends
# exactly where Go's ends; what is inside is not checked (a body Go refuses is Ollama's
# 400 whatever the gateway reads from it). Possessive, so it never backtracks.
INNER_DEPTH = 8
_ITEMS = [re.compile(rb"(?:" + _FLAT + (rb"|" + _nested_pattern(d) if d else b"") + rb")*+", re.S) for d in range(INNER_DEPTH + 1)]
_INNER_VALUE = rb"(?:" + _SCALAR_BARE + rb"|" + _nested_pattern(INNER_DEPTH) + rb")"  # a value `_ITEMS` skips whole
# One match covers at most this much of a body, so one call into the regular expression
# engine (which holds the GIL) stays short however large or odd the body is.
WINDOW = 256 * 1024


def _skip_nested(body: bytes, at: int, depth: int = 1) -> int:
    """The end of the array or object at `at` (nested `depth` deep), found window by
    window without building it. Items larger than a window are skipped one level down."""
    if depth > MAX_DEPTH:
        raise _Unreadable()
    end = len(body)
    at += 1  # the opening bracket
    while True:
        at = _ITEMS[min(INNER_DEPTH, MAX_DEPTH - depth)].match(body, at, min(end, at + WINDOW)).end()
        if at >= end:
            raise _Refused("unexpected end of JSON input")
        next_byte = body[at]
        if next_byte in (0x5D, 0x7D):  # ] }
            return at + 1
        if next_byte in (0x5B, 0x7B):  # [ {: an item that did not fit the window, or nests deeper
            at = _skip_nested(body, at, depth + 1)
        elif next_byte == 0x22:  # a string longer than the window (an image): window by window too
            at += 1
            while at < end and body[at] != 0x22:
                if body[at] == 0x5C:  # an escape the window's end cut: the backslash and what it escapes
                    at += 2
                else:
                    at = _STRING_INSIDE.match(body, at, min(end, at + WINDOW)).end()
            if at >= end:
                raise _Refused("unexpected end of JSON input")
            at += 1
        # else a run without brackets or quotes that goes past the window: the next one goes on


class _Unreadable(Exception):
    """The body is valid JSON as far as the gateway can tell, but nested too deep to follow."""


class _Refused(Exception):
    """Go's decoder refuses the body: Ollama answers 400."""


def go_string(raw: bytes) -> str:
    """A JSON string literal (quotes included) as Go unquotes it."""
    inner = raw[1:-1]
    if b"\\" not in inner and inner.isascii():
        return inner.decode("ascii")
    value = json.loads(raw.decode("utf-8", "go-replace"))
    return _LONE_SURROGATE.sub("\ufffd", value)


def _scalar(match: re.Match[bytes]) -> tuple[str, object]:
    """(JSON kind, value) of a matched scalar: a string's raw literal, a bool, else None."""
    string = match.group("string")
    if string is not None:
        return "string", string
    boolean = match.group("bool")
    if boolean is not None:
        return "bool", boolean == b"true"
    return ("null" if match.group("null") is not None else "number"), None


def _value(body: bytes, at: int) -> tuple[int, str, object]:
    """The value at `at`: (its end, its JSON kind, its value as `_scalar` gives it)."""
    if body[at : at + 1] in (b"[", b"{"):
        return _skip_nested(body, at), "array" if body[at] == 0x5B else "object", None
    match = _SCALAR_ALONE.match(body, at)
    if match is None:
        raise _Refused("invalid character looking for beginning of value")
    return (match.end(), *_scalar(match))


def _decoded(name: str, kind: str, value: object, go_type: str, current: object) -> object:
    """A field's value after one more occurrence of its key (Go's assignment rules)."""
    if kind == "null":
        return None if go_type in (BOOL_POINTER, MAP) else current
    if go_type == MAP and kind == "object":
        return True  # present: what it holds is not read
    if go_type == STRING and kind == "string":
        return go_string(value)  # type: ignore[arg-type]
    if go_type in (BOOL, BOOL_POINTER) and kind == "bool":
        return value
    raise _Refused(f"json: cannot unmarshal {kind} into the field {name!r} of type {go_type}")


@functools.cache
def _other_pairs(names: frozenset[str]) -> re.Pattern[bytes]:
    """A run of pairs none of `names` can be: plain ASCII keys (no escape, no byte a fold
    could turn into a field's letter) that are not one of the names in any case, each value
    scalar or nested at most INNER_DEPTH deep, each pair followed by a comma. Skipped in one
    match, so a body of many small keys costs no Python step per key. One per set of names."""
    alternatives = b"|".join(re.escape(name.encode()) for name in sorted(names))
    other_key = rb'"(?!(?i:' + alternatives + rb')")[^"\\\x00-\x1f\x80-\xff]*+"'
    return re.compile(rb"(?:" + _WS + other_key + _WS + rb":" + _WS + _INNER_VALUE + _WS + rb",)*+", re.S)


class _Fields:
    """A handler's read fields, looked up as Go looks a key up: the raw spelling first
    (the usual case, no decoding), then the unquoted key, then its fold."""

    def __init__(self, handler: Handler) -> None:
        self.types = handler.fields
        self.raw = {b'"' + name.encode() + b'"': name for name in handler.fields}
        self.folded = {go_fold(name): name for name in handler.fields}
        self.other_pairs = _other_pairs(frozenset(handler.fields))

    def name_of(self, raw_key: bytes) -> str | None:
        name = self.raw.get(raw_key)
        if name is not None:
            return name
        key = go_string(raw_key)
        return key if key in self.types else self.folded.get(go_fold(key))


_FIELDS = {id(handler): _Fields(handler) for handler in HANDLERS.values()}


def read_body(handler: Handler, body: bytes) -> Reading:
    """Decode `body` as Go decodes it into `handler`'s struct, for the fields it reads."""
    fields = _FIELDS.get(id(handler)) or _Fields(handler)
    values: dict[str, object] = {}
    exact_model: bytes | None = None  # the cloud pass-through's `model`: a string literal, or None
    other_keys = False
    trailing = False
    try:
        at = _WHITESPACE.match(body).end()
        if at >= len(body):
            raise _Refused("missing request body")
        if body[at] != 0x7B:  # {
            _, kind, _ = _value(body, at)
            if kind == "null":
                return Reading()  # Go: decoding null into a struct changes nothing
            raise _Refused(f"json: cannot unmarshal {kind} into an object")
        empty = _AFTER_VALUE.match(body, at + 1)
        if empty is not None and empty.group(1) == b"}":
            at = empty.end()
        else:
            at += 1
            while True:
                skipped = fields.other_pairs.match(body, at, min(len(body), at + WINDOW)).end()
                if skipped > at:
                    at, other_keys = skipped, True
                pair = _SCALAR_PAIR.match(body, at)
                if pair is not None:
                    (kind, value), at = _scalar(pair), pair.end()
                else:  # a nested value (or a syntax error)
                    pair = _KEY.match(body, at)
                    if pair is None:
                        raise _Refused("invalid character looking for beginning of object key string")
                    at, kind, value = _value(body, pair.end())
                    after = _AFTER_VALUE.match(body, at)
                    if after is None:
                        raise _Refused("invalid character after object key:value pair")
                    at = after.end()
                raw_key = pair.group("key")
                name = fields.name_of(raw_key)
                if name is None:
                    other_keys = True
                else:
                    values[name] = _decoded(name, kind, value, fields.types[name], values.get(name))
                if handler.cloud_pass_through and (raw_key == b'"model"' or (name is not None and go_string(raw_key) == "model")):
                    exact_model = value if kind == "string" else None  # a Go map: the last one wins
                if body[at - 1] == 0x7D:  # }
                    break
        trailing = _WHITESPACE.match(body, at).end() < len(body)
    except _Refused as refused:
        return Reading(models=None, error=f"Ollama cannot decode this request body: {refused}")
    except _Unreadable:
        return Reading(models=None)
    except IndexError:  # the body ended inside the object
        return Reading(models=None, error="Ollama cannot decode this request body: unexpected end of JSON input")
    if any(values.get(name) for name in handler.unnamed_sources):
        return Reading(True, None, values.get("stream"), False, other_keys)  # type: ignore[arg-type]
    models = []
    for group in handler.models:
        named = next((values[name] for name in group if values.get(name)), None)
        if named is not None:
            models.append(named)
    if exact_model is not None and not trailing:  # json.Unmarshal refuses trailing data
        cloud = go_string(exact_model).strip()
        if cloud and cloud not in models:
            models.append(cloud)
    return Reading(True, tuple(models), values.get("stream"), bool(values.get("verbose")), other_keys)  # type: ignore[arg-type]
