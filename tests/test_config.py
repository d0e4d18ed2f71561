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


def test_model_list_entries_may_name_a_gpu_and_models_that_share_one_form_a_pool():
    from config import Pool

    s = load_settings({"OLLAMA_MODEL_LIST": "qwen3:8b@L4, glm-4.7-flash:q8_0@A100-80GB, llama3.2, phi4@l4", "OLLAMA_GPU": "A100-40GB"})
    assert s.ollama_pools == (
        Pool("default", "A100-40GB", ("llama3.2",)),
        Pool("l4", "L4", ("qwen3:8b", "phi4")),
        Pool("a100-80gb", "A100-80GB", ("glm-4.7-flash:q8_0",)),
    )
    assert [p.class_name for p in s.ollama_pools] == ["OllamaBackend", "OllamaBackend_L4", "OllamaBackend_A100_80GB"]
    assert s.ollama_model_list == ("llama3.2", "qwen3:8b", "phi4", "glm-4.7-flash:q8_0")  # names, without @GPU
    # Naming the default GPU is the default pool; the default configuration is one pool.
    assert load_settings({"OLLAMA_MODEL_LIST": "a@A100-40GB,b"}).ollama_pools == (Pool("default", "A100-40GB", ("a", "b")),)
    assert load_settings({}).ollama_pools == Settings().ollama_pools and len(Settings().ollama_pools) == 1
    assert [p.name for p in load_settings({"OLLAMA_MODEL_LIST": "a@H100:2"}).ollama_pools] == ["default", "h100x2"]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("qwen3:8b@RTX4090", "OLLAMA_MODEL_LIST: 'qwen3:8b@RTX4090' names the GPU 'RTX4090'"),
        ("qwen3:8b@", "OLLAMA_MODEL_LIST: 'qwen3:8b@' names the GPU ''"),
        ("qwen3:8b@L4,qwen3:8b@H100", "OLLAMA_MODEL_LIST: 'qwen3:8b' is in two pools (L4 and H100)"),
        ("llama3.2,library/llama3.2:latest@L4", "is in two pools (A100-40GB and L4)"),  # one model by Ollama's name rules
        ("not a model@L4", "OLLAMA_MODEL_LIST: 'not a model' is not an Ollama model name"),
    ],
)
def test_bad_pools_fail_naming_the_variable(models, message):
    with pytest.raises(ConfigError) as info:
        load_settings({"OLLAMA_MODEL_LIST": models})
    assert message in str(info.value)
