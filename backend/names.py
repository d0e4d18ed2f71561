"""Ollama's model-name rules (types/model/name.go), for matching names as Ollama does.

`llama3.2`, `library/llama3.2`, `registry.ollama.ai/library/llama3.2:latest` and
`LLaMA3.2` all name one model: the host, the `library` namespace and the `latest` tag
are defaults, and Ollama compares names without regard to case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")  # model and tag


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """One string per model, whatever way it was written (compare with this)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def is_cloud(self) -> bool:
        """Ollama sends `:cloud` and `-cloud` models to ollama.com, not to its own store."""
        return self.tag.lower() == "cloud" or self.tag.lower().endswith("-cloud")


def parse_name(name: str) -> ModelName | None:
    """`name` with Ollama's defaults filled in, or None if Ollama would not take it as a
    model name (then only Ollama should answer for it).

    As ParseNameBare: a tag follows the last `:` if it comes after the last `/`; then
    the model, the namespace and the host are cut from the right at `/`. Names with a
    kind segment (`host/ns/kind/model`) are left to Ollama too.
    """
    rest, tag = name, DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    parts = rest.rsplit("/", 2)
    host, namespace, model = [DEFAULT_HOST, DEFAULT_NAMESPACE][: 3 - len(parts)] + parts
    host = host.split("://", 1)[-1]  # a `/` left in the host (a kind segment) makes it invalid
    if not (_HOST.fullmatch(host) and _NAMESPACE.fullmatch(namespace) and _PART.fullmatch(model) and _PART.fullmatch(tag)):
        return None
    return ModelName(host, namespace, model, tag)
