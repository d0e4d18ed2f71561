"""A reference for Go's encoding/json decoding a request body into a struct, for tests.

Written independently of `proxy.reading` and the other way round: it builds the whole
value with Python's own JSON parser (fine for test bodies), then applies Go's rules
field by field. The stand-in Ollama decodes with it, so what the stand-in records is
what Ollama would have done; `tests/test_reading.py` checks it against real Go too.
"""

from __future__ import annotations

import codecs
import json
import re

STRING, BOOL, BOOL_POINTER, MAP = "string", "bool", "*bool", "map"

# Go's foldName: ASCII letters to upper case; the only non-ASCII runes whose simple-fold
# orbit holds an ASCII letter are U+017F (s) and U+212A (k).
_FOLD = {**{c: c - 32 for c in range(ord("a"), ord("z") + 1)}, 0x017F: ord("S"), 0x212A: ord("K")}
codecs.register_error("go-replace-ref", lambda e: ("\ufffd" * (e.end - e.start), e.end))


def fold(key: str) -> str:
    return key.translate(_FOLD)


class GoDecodeError(ValueError):
    """Go's decoder returns an error: Ollama answers 400."""


def _refuse_constant(name: str) -> object:
    raise GoDecodeError(f"invalid character in {name}")


def _strings_as_go(value: object) -> object:
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, list):
        return [_strings_as_go(v) for v in value]
    return value


def first_value(body: bytes) -> tuple[object, bool]:
    """The first JSON value of `body` (objects as lists of pairs) and whether anything
    but whitespace follows it (a Decoder ignores that; json.Unmarshal refuses it)."""
    text = body.decode("utf-8", "go-replace-ref")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise GoDecodeError("EOF")
    decoder = json.JSONDecoder(object_pairs_hook=lambda pairs: [("__pair__", k, v) for k, v in pairs], parse_constant=_refuse_constant)
    try:
        value, end = decoder.raw_decode(text, start)
    except (ValueError, RecursionError) as exc:
        raise GoDecodeError(str(exc)) from None
    return value, bool(text[end:].strip(" \t\n\r"))


def decode(body: bytes, fields: dict[str, str]) -> dict[str, object]:
    """The struct's read fields after `json.NewDecoder(body).Decode(&req)`; raises
    GoDecodeError where Go returns an error. Unset fields are absent."""
    value, _ = first_value(body)
    if value is None:
        return {}
    if not (isinstance(value, list) and all(isinstance(p, tuple) and p[0] == "__pair__" for p in value)) or (
        value == [] and not body.lstrip(b" \t\n\r").startswith(b"{")
    ):
        raise GoDecodeError("cannot unmarshal non-object into Go struct")
    folded = {name.translate(_FOLD): name for name in fields}
    result: dict[str, object] = {}
    error = None
    for _, key, item in value:
        key = _strings_as_go(key)
        name = key if key in fields else folded.get(key.translate(_FOLD))
        if name is None:
            continue
        kind = fields[name]
        if item is None:
            if kind in (BOOL_POINTER, MAP):
                result.pop(name, None)
            continue
        if kind == MAP and isinstance(item, list) and all(isinstance(p, tuple) for p in item):
            result[name] = True  # an object (what it holds is not compared)
        elif (kind == STRING and isinstance(item, str)) or (kind in (BOOL, BOOL_POINTER) and isinstance(item, bool)):
            result[name] = _strings_as_go(item)
        elif error is None:
            error = f"json: cannot unmarshal into Go struct field .{name} of type {kind}"
    if error is not None:
        raise GoDecodeError(error)
    return result


def cloud_model(body: bytes) -> str | None:
    """As Ollama's cloud pass-through reads the model: the exact key `model` of a
    `map[string]json.RawMessage` (json.Unmarshal: no trailing data), trimmed."""
    try:
        value, trailing = first_value(body)
    except GoDecodeError:
        return None
    if trailing or not isinstance(value, list):
        return None
    model = None
    for _, key, item in value:
        if _strings_as_go(key) == "model":
            model = item
    return (_strings_as_go(model).strip() or None) if isinstance(model, str) else None
