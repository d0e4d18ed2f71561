"""What the gateway tells its operator: Prometheus metrics and one access-log line per request.

The forwarder fills an `Exchange` as the request goes; it is recorded once, when the
request ends. Nothing here runs per chunk: the forwarder only adds to a plain int.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.policy import ModelLabels

if TYPE_CHECKING:
    from proxy.transport import BackendResponse

access_log = logging.getLogger("proxy.access")

# Ollama's routes (server/routes.go); anything else is "other", so labels stay bounded.
_FAMILIES = {
    "/": "root",
    "/api/version": "api/version",
    "/api/tags": "api/tags",
    "/api/ps": "api/ps",
    "/api/show": "api/show",
    "/api/generate": "api/generate",
    "/api/chat": "api/chat",
    "/api/embed": "api/embed",
    "/api/embeddings": "api/embeddings",
    "/api/pull": "api/pull",
    "/api/push": "api/push",
    "/api/create": "api/create",
    "/api/copy": "api/copy",
    "/api/delete": "api/delete",
    "/v1/chat/completions": "v1/chat/completions",
    "/v1/completions": "v1/completions",
    "/v1/embeddings": "v1/embeddings",
    "/v1/responses": "v1/responses",
    "/v1/messages": "v1/messages",
    "/v1/models": "v1/models",
}

_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"})


def route_family(route: str) -> str:
    """`/api/chat` -> `api/chat`; `/v1/models/llama3` -> `v1/models`; unknown -> `other`,
    from a route decoded by `route_of` (the metrics' bounded label)."""
    if route in _FAMILIES:
        return _FAMILIES[route]
    if route.startswith("/v1/models/"):
        return "v1/models"
    if route.startswith("/api/blobs/"):
        return "api/blobs"
    return "other"


@dataclass
class Exchange:
    """One forwarded request, as the operator sees it."""

    method: str
    path: str  # upstream path, without the query string
    family: str
    model: str | None = None
    status: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    bytes_out: int = 0
    client_left: bool = False
    error: str | None = None  # the gateway's own error kind, if any
    served_by: str = "gateway"  # "backend" once Ollama's answer is relayed
    backend_head: float | None = None  # when the backend's response head came
    early_head: bool = False  # the gateway sent the head while the backend was still starting
    cold_start: bool = False  # this request waited for its GPU container to start
    pool: str = ""  # the GPU pool that answered, if one did
    key: str = ""  # the name of the API key used (never the key)
    prompt_tokens: int | None = None  # as Ollama reported them at the end of its answer
    completion_tokens: int | None = None
    reruns: int = 0  # preempted GPU runs replaced before the client saw any of their body

    def answered_by(self, response: BackendResponse) -> None:
        """Who answered: the backend or the gateway, after a cold start or not, which pool."""
        self.served_by, self.cold_start, self.pool = response.served_by, response.cold_start, response.pool

    def log_fields(self, now: float) -> dict:
        ttfb = None if self.first_byte is None else round((self.first_byte - self.started) * 1000, 1)
        waited = None if self.backend_head is None else round((self.backend_head - self.started) * 1000, 1)
        fields = {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "ttfb_ms": ttfb,
            "duration_ms": round((now - self.started) * 1000, 1),
            "bytes_out": self.bytes_out,
            "client_left": self.client_left,
            "served_by": self.served_by,
            "pool": self.pool or None,
            "backend_wait_ms": waited,
        }
        if self.key:
            fields["key"] = self.key
        if self.prompt_tokens is not None:
            fields["prompt_tokens"], fields["completion_tokens"] = self.prompt_tokens, self.completion_tokens
        if self.early_head:
            fields["early_head"] = True
        if self.cold_start:
            fields["cold_start"] = True
        if self.reruns:
            fields["reruns"] = self.reruns
        if self.error:
            fields["error"] = self.error
        return fields


LONG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)  # seconds: a stream, a cold start


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, model_labels: ModelLabels | None = None) -> None:
        self.model_labels = model_labels or ModelLabels(())
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = Counter(
            "garden_requests", "Requests under /ollama, by who answered them", ["method", "family", "status", "served_by", "pool"], registry=r
        )
        self.in_flight = Gauge("garden_streams_in_flight", "Responses being relayed right now", registry=r)
        self.ttfb = Histogram(
            "garden_time_to_first_byte_seconds",
            "From request to the response head from the backend",
            ["family"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.duration = Histogram(
            "garden_request_duration_seconds",
            "From request to the last byte relayed",
            ["family"],
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.backend_wait = Histogram(
            "garden_backend_wait_seconds",
            "From request to the backend's response head (a cold start included)",
            ["family"],
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.early_heads = Counter("garden_early_heads", "Streams whose head the gateway sent while the backend started", ["family"], registry=r)
        # garden_cold_starts_total{pool,key} and GPU time: proxy.garden's collector.
        self.tokens = Counter("garden_tokens", "Tokens Ollama reported, by key name, model and kind", ["key", "model", "kind"], registry=r)
        self.bytes_relayed = Counter("garden_bytes_relayed", "Response body bytes relayed to clients", registry=r)
        self.disconnects = Counter("garden_client_disconnects", "Clients that left before the response ended", ["family"], registry=r)
        self.errors = Counter("garden_gateway_errors", "Errors the gateway produced itself", ["kind"], registry=r)
        self.reruns = Counter(
            "garden_backend_reruns",
            "GPU runs preempted mid-answer: replaced unseen (invisible) or the answer ended with an error (told)",
            ["pool", "outcome"],
            registry=r,
        )

    def _child(self, metric, labels: tuple[str, ...]):  # noqa: ANN001, ANN202 (a prometheus_client metric)
        """`metric.labels(*labels)`, kept: prometheus_client's lookup validates and copies
        the labels on every call, which showed in the per-request profile."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, exchange: Exchange) -> None:
        """Count a finished exchange and write its access-log line. Once per request."""
        now = time.perf_counter()
        family = exchange.family
        method = exchange.method if exchange.method in _METHODS else "other"  # any token is a method
        self._child(self.requests, (method, family, str(exchange.status), exchange.served_by, exchange.pool)).inc()
        if exchange.first_byte is not None:
            self._child(self.ttfb, (family,)).observe(exchange.first_byte - exchange.started)
        if exchange.backend_head is not None and exchange.served_by == "backend":
            self._child(self.backend_wait, (family,)).observe(exchange.backend_head - exchange.started)
        if exchange.early_head:
            self.early_heads.labels(family).inc()
        if exchange.prompt_tokens is not None:
            model = self.model_labels.label(exchange.model)  # bounded: known models or "other"
            self._child(self.tokens, (exchange.key, model, "prompt")).inc(exchange.prompt_tokens)
            self._child(self.tokens, (exchange.key, model, "completion")).inc(exchange.completion_tokens or 0)
        self._child(self.duration, (family,)).observe(now - exchange.started)
        if exchange.bytes_out:
            self.bytes_relayed.inc(exchange.bytes_out)
        if exchange.client_left:
            self.disconnects.labels(family).inc()
        if exchange.error:
            self.errors.labels(exchange.error).inc()
        if exchange.reruns:
            self.reruns.labels(exchange.pool, "invisible").inc(exchange.reruns)
        if exchange.error == "backend_preempted":
            self.reruns.labels(exchange.pool, "told").inc()
        access_log.info(json.dumps(exchange.log_fields(now), separators=(",", ":")))
