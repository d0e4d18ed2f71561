"""config: every setting from the environment, checked at import."""

from __future__ import annotations

import pytest

from config import ConfigError, Settings, forwarded_env, load_settings


def test_defaults():
    s = load_settings({})
    assert s == Settings()
    assert s.ollama_gpu == "A100-40GB" and s.ollama_scaledown == 300 and s.ollama_timeout == 1800
    assert s.ollama_model_list == ("glm-4.7-flash:q8_0", "glm-4.7-flash:q4_K_M")
    assert s.gateway_min_containers == 1 and s.gateway_max_inputs == 1000
    assert s.gateway_timeout >= s.ollama_timeout
    assert s.ollama_url == "http://127.0.0.1:11434"
    assert s.gateway_max_body_mb == 100 and s.gateway_body_timeout_s == 60


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("ollama.local", "http://ollama.local:11434"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example", "https://ollama.example:443"),
        ("[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_in_ollamas_own_forms(raw, url):
    assert load_settings({"OLLAMA_HOST": raw}).ollama_url == url


def test_model_list_is_comma_separated_and_trimmed():
    assert load_settings({"OLLAMA_MODEL_LIST": " qwen3:0.6b , ,llama3.2 "}).ollama_model_list == ("qwen3:0.6b", "llama3.2")
    assert load_settings({"OLLAMA_MODEL_LIST": ""}).ollama_model_list == ()


@pytest.mark.parametrize("gpu", ["T4", "L40S", "a100-80gb", "H100:8", "A10G"])
def test_gpu_accepted(gpu):
    assert load_settings({"OLLAMA_GPU": gpu}).ollama_gpu == gpu


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OLLAMA_GPU": ""}, "OLLAMA_GPU is empty: expected a Modal GPU type"),
        ({"OLLAMA_GPU": "RTX4090"}, "OLLAMA_GPU='RTX4090': expected a Modal GPU type"),
        ({"OLLAMA_GPU": "H100:0"}, "OLLAMA_GPU='H100:0'"),
        ({"OLLAMA_SCALEDOWN": "1"}, "OLLAMA_SCALEDOWN='1': expected a whole number from 2 to 3600"),
        ({"OLLAMA_SCALEDOWN": "3601"}, "from 2 to 3600"),
        ({"OLLAMA_TIMEOUT": "30m"}, "OLLAMA_TIMEOUT='30m': expected a whole number"),
        ({"OLLAMA_TIMEOUT": "90000"}, "from 10 to 86400"),
        ({"OLLAMA_MAX_INPUTS": "0"}, "OLLAMA_MAX_INPUTS='0'"),
        ({"GATEWAY_MIN_CONTAINERS": "-1"}, "GATEWAY_MIN_CONTAINERS='-1'"),
        ({"GATEWAY_MAX_INPUTS": "many"}, "GATEWAY_MAX_INPUTS='many'"),
        # Modal's web proxy serves at most 1,000 concurrent requests per container.
        ({"GATEWAY_MAX_INPUTS": "1001"}, "GATEWAY_MAX_INPUTS='1001': expected a whole number from 1 to 1000"),
        ({"GATEWAY_BODY_TIMEOUT_S": "0"}, "GATEWAY_BODY_TIMEOUT_S='0': expected a whole number from 1 to 3600"),
        ({"OLLAMA_VERSION": "latest"}, "OLLAMA_VERSION='latest': expected a release number"),
        ({"OLLAMA_HOST": "localhost:http"}, "OLLAMA_HOST"),
    ],
)
def test_bad_values_name_the_variable_and_the_accepted_form(env, message):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


def test_forwarded_env_carries_settings_but_never_secrets_or_the_local_host():
    env = {"OLLAMA_GPU": "L4", "OLLAMA_HOST": "127.0.0.1:1", "GATEWAY_API_KEYS": "k", "HOME": "/root"}
    assert forwarded_env(env) == {"OLLAMA_GPU": "L4"}
