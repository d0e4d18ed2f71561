"""Sharing a garden: what each named key may use (models), how much at once and per
minute (limits), and how many tokens it used (from what Ollama already reports).

State is per gateway container: Modal may run several gateway containers under load, and
each then counts on its own (see the README's "Sharing your garden").
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.names import parse_name
from backend.routes import writes_model_store
from config import KeyPolicy
from proxy.reading import reads_a_model

NO_POLICY = KeyPolicy()
LISTINGS = frozenset({"/api/tags", "/api/ps", "/v1/models"})  # answers that list models: filtered per key

# Besides the routes whose models the gateway reads (`proxy.reading`), a key limited to
# some models may ask for the model listings (filtered for it) and the server's version.
_LIMITED_KEY_EXTRAS = frozenset(
    {
        ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"),
        ("GET", "/api/tags"), ("HEAD", "/api/tags"), ("GET", "/api/ps"), ("GET", "/v1/models"),
    }
)  # fmt: skip


def limited_key_may_use(method: str, route: str) -> bool:
    """An allow-list: everything else (blobs, images, audio, account and experimental
    routes, and any route a later Ollama adds) is refused to a key limited to some
    models, since the gateway cannot tell which models it would use. Nor may such a key
    change the model store (pull, push, create, copy, delete): its models are the
    owner's too, and a create or a copy would change what the owner runs."""
    return (reads_a_model(method, route) and not writes_model_store(method, route)) or (method, route) in _LIMITED_KEY_EXTRAS


def policy_for(name: str, policies: dict[str, KeyPolicy]) -> KeyPolicy:
    return policies.get(name) or policies.get("*") or NO_POLICY


class ModelRules:
    """A key's allowlist, by Ollama's name rules (`llama3.2` is `llama3.2:latest`)."""

    def __init__(self, models: tuple[str, ...] | None) -> None:
        self.open = models is None
        self.keys = frozenset(parsed.key for parsed in map(parse_name, models or ()) if parsed is not None)

    def allows(self, model: str) -> bool:
        if self.open:
            return True
        parsed = parse_name(model)
        return parsed is not None and parsed.key in self.keys


def filter_listing(route: str, body: bytes, rules: ModelRules) -> bytes | None:
    """A model listing (tags, ps, /v1/models) with only the models `rules` allows, in the
    same JSON shape; None if `body` is not such a listing."""
    try:
        listing = json.loads(body)
    except (ValueError, RecursionError):
        return None
    field, name_of = ("data", "id") if route == "/v1/models" else ("models", "name")
    if not isinstance(listing, dict) or not isinstance(listing.get(field) or [], list):
        return None
    kept = [m for m in listing.get(field) or [] if isinstance(m, dict) and isinstance(m.get(name_of), str) and rules.allows(m[name_of])]
    filtered = json.dumps({**listing, field: kept}, separators=(",", ":")).encode()
    return filtered + b"\n" if route == "/v1/models" else filtered  # as Ollama writes each


@dataclass
class Refusal:
    message: str
    retry_after: int


class Limits:
    """Per-key counts of requests in flight and of requests in the last minute."""

    WINDOW = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.in_flight: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def admit(self, name: str, policy: KeyPolicy) -> Refusal | None:
        """Count a new request of `name` in, or say why not (then nothing is counted)."""
        if policy.max_streams is not None and self.in_flight[name] >= policy.max_streams:
            return Refusal(f"key {name!r} has {policy.max_streams} requests in flight, its limit: retry when one ends", 1)
        if policy.requests_per_minute is not None:
            now = self.clock()
            recent = self._recent[name]
            while recent and recent[0] <= now - self.WINDOW:
                recent.popleft()
            if len(recent) >= policy.requests_per_minute:
                wait = max(1, int(recent[0] + self.WINDOW - now + 0.999))
                return Refusal(f"key {name!r} made {policy.requests_per_minute} requests in the last minute, its limit", wait)
            recent.append(now)
        self.in_flight[name] += 1
        return None

    def done(self, name: str) -> None:
        self.in_flight[name] -= 1
        if self.in_flight[name] <= 0:
            del self.in_flight[name]


# Token counts as Ollama reports them at the end of an answer: the native final line or
# body (`prompt_eval_count`, `eval_count`), or OpenAI's `usage`. In JSON a quote inside a
# string is escaped, so these keys cannot be faked by a model's output.
_NUMBER = re.compile(rb"\s*(\d+)")
_REPORTS = (
    (b'"prompt_eval_count":', b'"eval_count":'),  # native; /api/embed reports the prompt only
    (b'"prompt_tokens":', b'"completion_tokens":'),  # OpenAI; /v1/embeddings reports the prompt only
    (b'"input_tokens":', b'"output_tokens":'),  # /v1/responses and /v1/messages
)


def reported_tokens(tail: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the last bytes of an answer, or None if it has no
    final report (a stream cut short counts nothing). Found from the end, with no scan of
    what came before."""
    for prompt_key, completion_key in _REPORTS:
        prompt_at = tail.rfind(prompt_key)
        if prompt_at < 0:
            continue
        completion_at = tail.find(completion_key, prompt_at + len(prompt_key))
        prompt = _NUMBER.match(tail, prompt_at + len(prompt_key))
        completion = _NUMBER.match(tail, completion_at + len(completion_key)) if completion_at >= 0 else None
        if prompt:
            return int(prompt.group(1)), int(completion.group(1)) if completion else 0
    return None


class ModelLabels:
    """Token-count labels for the models the garden knows: configured (OLLAMA_MODEL_LIST)
    or in the catalog of what the GPU's Ollama holds. Any other name is `other`, so no
    request can create a series."""

    KEPT = 1024  # labels of known models kept, as spelled by clients (bounded: a client picks the spelling)

    def __init__(self, configured: tuple[str, ...], catalog: Callable[[], frozenset[str]] = frozenset) -> None:
        self.configured = frozenset(parsed.key for parsed in map(parse_name, configured) if parsed is not None)
        self.catalog = catalog  # the catalog's model keys (Ollama's name rules), read from memory
        self._known: dict[str, str] = {}  # a spelling -> its label, for models found known once

    def label(self, model: str | None) -> str:
        if not model:
            return "other"
        known = self._known.get(model)
        if known is not None:
            return known
        parsed = parse_name(model)
        if parsed is None or (parsed.key not in self.configured and parsed.key not in self.catalog()):
            return "other"
        label = model_label(model)
        if len(self._known) < self.KEPT:
            self._known[model] = label
        return label


def model_label(model: str | None) -> str:
    """A model as a metric label: one spelling per model (`LLaMA3.2` and
    `library/llama3.2:latest` are `llama3.2:latest`), so a client cannot multiply series."""
    parsed = parse_name(model) if model else None
    if parsed is None:
        return "other"
    short = f"{parsed.model}:{parsed.tag}" if parsed.namespace == "library" else f"{parsed.namespace}/{parsed.model}:{parsed.tag}"
    return (short if parsed.host == "registry.ollama.ai" else f"{parsed.host}/{short}").lower()
