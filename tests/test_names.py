"""backend.names: Ollama's model-name rules (types/model/name.go), for matching names."""

from __future__ import annotations

import pytest

from backend.names import ModelName, parse_name


@pytest.mark.parametrize(
    "written",
    ["llama3.2", "llama3.2:latest", "library/llama3.2", "registry.ollama.ai/library/llama3.2", "registry.ollama.ai/library/llama3.2:latest", "LLaMA3.2"],
)
def test_the_defaults_are_optional_and_case_does_not_matter(written):
    assert parse_name(written).key == "registry.ollama.ai/library/llama3.2:latest"


def test_parts_are_cut_from_the_right():
    assert parse_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == ModelName("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")
    assert parse_name("user/model") == ModelName("registry.ollama.ai", "user", "model", "latest")
    assert parse_name("localhost:5000/ns/m") == ModelName("localhost:5000", "ns", "m", "latest")  # a host's port is no tag
    assert parse_name("https://ollama.com/library/x") == ModelName("ollama.com", "library", "x", "latest")  # a scheme is dropped
    assert parse_name("user/model").namespace == "user"  # what /v1/models calls owned_by


@pytest.mark.parametrize("invalid", ["", "llama3.2:", "/m", "a/b/c/d", "a b", "ns.with.dots/m", "-m", "m:" + "t" * 81])
def test_names_ollama_would_refuse_parse_to_none(invalid):
    assert parse_name(invalid) is None


def test_cloud_models_are_told_apart():
    assert parse_name("gpt-oss:120b-cloud").is_cloud and parse_name("x:cloud").is_cloud
    assert not parse_name("qwen3:8b").is_cloud
