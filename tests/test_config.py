"""config: every setting from the environment, checked at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import (
    SETTINGS_FILE, ConfigError, Settings, api_keys, deploy_refusal, environment, forwarded_env, load_settings,
    network_refusal, read_settings_file,
)  # fmt: skip
from tests.fake_ollama import REPO, env_with_path


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


# --- GATEWAY_API_KEYS: strict, because a typo locks everyone out or merges two keys --------


def test_keys_are_trimmed_around_names_and_keys():
    keys = api_keys(load_settings({"GATEWAY_API_KEYS": " me: sk-1 , partner :sk-2,sk-3 "}).gateway_api_keys)
    assert [(k.name, k.key) for k in keys] == [("me", "sk-1"), ("partner", "sk-2"), ("key-3", "sk-3")]
    assert [(k.name, k.key) for k in api_keys(("me:abc:def",))] == [("me", "abc:def")]  # a named key may hold ':'


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("me:sk-1;partner:sk-2", "GATEWAY_API_KEYS: entry 1 holds a space, ';' or '|' inside it: separate keys with ',' only"),
        ("me:sk-1 partner:sk-2", "GATEWAY_API_KEYS: entry 1 holds a space, ';' or '|' inside it: separate keys with ',' only"),
        ("me:sk-1|partner:sk-2", "GATEWAY_API_KEYS: entry 1 holds a space, ';' or '|' inside it: separate keys with ',' only"),
        ("me:", "GATEWAY_API_KEYS: entry 1 ('me') has a name and no key after its ':'"),
        ("me:sk-1,:sk-2", "GATEWAY_API_KEYS: entry 2 has an empty name before its ':'"),
        ("me:sk-1,,partner:sk-2", "GATEWAY_API_KEYS: entry 2 is empty (two commas in a row, or one at the end)"),
        ("me:sk-1,", "GATEWAY_API_KEYS: entry 2 is empty"),
        ("sk/1:x", "GATEWAY_API_KEYS: entry 1 has something that is not a name (letters, digits, _ . -, up to 64) before its ':'"),
        ("me:sk-1,me:sk-2", "GATEWAY_API_KEYS: the name 'me' is given to two keys"),
        ("me:sk-1,partner:sk-1", "GATEWAY_API_KEYS: 'me' and 'partner' are the same key: give each name its own key"),
        ("sk-1,partner: sk-1", "GATEWAY_API_KEYS: 'key-1' and 'partner' are the same key"),
    ],
)
def test_key_typos_fail_at_import_in_one_line_naming_the_variable_never_a_key(raw, message):
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_API_KEYS": raw})
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
    assert "sk-1" not in text and "sk-2" not in text  # the message names entries, never shows a key


def test_keys_fail_at_import_of_the_gateway_too():
    # A local gateway started with a typo stops before it listens (exit 2, one line).
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], cwd=REPO, env=env_with_path(None, GATEWAY_API_KEYS="me:sk-1;partner:sk-2"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("configuration error: GATEWAY_API_KEYS: entry 1 holds a space, ';' or '|'")


# --- The settings file ---------------------------------------------------------------------


def test_the_settings_file_fills_in_what_the_environment_does_not_set(tmp_path):
    path = tmp_path / "garden.env"
    path.write_text('# my garden\nOLLAMA_GPU=L4\nexport OLLAMA_MODEL_LIST="llama3.2, qwen3:8b@A100-80GB"\nOLLAMA_SCALEDOWN=60\n')
    env = environment({"GARDEN_SETTINGS_FILE": str(path), "OLLAMA_SCALEDOWN": "120"})
    settings = load_settings(env)
    assert settings.ollama_gpu == "L4" and settings.ollama_model_list == ("llama3.2", "qwen3:8b")
    assert settings.ollama_scaledown == 120  # the environment wins
    # What containers are given is what the deployer's file and environment say together.
    assert forwarded_env(env) == {"OLLAMA_GPU": "L4", "OLLAMA_MODEL_LIST": "llama3.2, qwen3:8b@A100-80GB", "OLLAMA_SCALEDOWN": "120"}


def test_the_default_settings_file_is_garden_env_next_to_config_and_is_ignored_by_git():
    assert SETTINGS_FILE == REPO / "garden.env"
    assert "garden.env" in (REPO / ".gitignore").read_text().splitlines()
    example = read_settings_file(REPO / "garden.env.example")  # the shipped example is itself valid
    assert "GATEWAY_API_KEYS" not in example and load_settings(example).ollama_gpu == "L4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GATEWAY_API_KEYS=me:sk-1\n", "garden.env: GATEWAY_API_KEYS does not belong in a file: put keys in a Modal Secret"),
        ("OLAMA_GPU=L4\n", "garden.env: OLAMA_GPU is not a setting of this garden"),
        ("OLLAMA_GPU\n", "garden.env: OLLAMA_GPU has no '='"),
        ("OLLAMA_GPU=RTX9000\n", "OLLAMA_GPU='RTX9000': expected a Modal GPU type"),
    ],
)
def test_a_bad_settings_file_fails_naming_the_file_and_the_variable(tmp_path, text, message):
    path = tmp_path / "garden.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(environment({"GARDEN_SETTINGS_FILE": str(path)}))
    assert message in str(info.value) and "sk-1" not in str(info.value)


def test_a_settings_file_that_was_named_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="GARDEN_SETTINGS_FILE=.*no such file"):
        environment({"GARDEN_SETTINGS_FILE": str(tmp_path / "missing.env")})


# --- Safe by default -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({}, True),
        ({"GATEWAY_API_KEYS": "me:sk-1"}, False),
        ({"GATEWAY_API_KEYS_SECRET": "garden-keys"}, False),
        ({"GATEWAY_PROXY_AUTH": "true"}, False),
        ({"GATEWAY_ALLOW_OPEN": "1"}, False),
        ({"GATEWAY_ALLOW_OPEN": "0"}, True),
    ],
)
def test_a_deploy_is_refused_only_when_nothing_protects_it(env, refused):
    assert (deploy_refusal(load_settings(env)) is not None) is refused


def test_local_mode_stays_open_on_loopback_only():
    open_ = load_settings({})
    assert network_refusal(open_, "127.0.0.1", loopback=True) is None
    assert network_refusal(open_, "0.0.0.0", loopback=False).startswith("refusing to serve --host 0.0.0.0 without a key")
    assert network_refusal(load_settings({"GATEWAY_API_KEYS": "k"}), "0.0.0.0", loopback=False) is None
    assert network_refusal(load_settings({"GATEWAY_ALLOW_OPEN": "yes"}), "0.0.0.0", loopback=False) is None
