"""app.py's Modal wiring, read offline with `.info()` (no account, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fake_ollama import REPO, env_with_path

READ_WIRING = """
import json, app, config
g = app.gateway.info()
b = app.OllamaBackend().proxy.info()
print(json.dumps({
    "app_name": app.app.name,
    "gateway": {"gpus": g.gpus, "timeout": g.timeout, "max_inputs": g.concurrency_info.max_inputs,
                "web": g.web_info is not None, "unauthenticated": g.web_info.unauthenticated if g.web_info else None,
                "volumes": sorted(g.volumes), "min_containers": config.settings.gateway_min_containers,
                "nonpreemptible": g.nonpreemptible},
    "backend": {"gpus": b.gpus, "timeout": b.timeout, "max_inputs": b.concurrency_info.max_inputs,
                "startup_timeout": b.startup_timeout, "max_containers": config.settings.ollama_max_containers,
                "retries": b.max_retries, "methods": b.method_names, "web": b.web_info is not None,
                "nonpreemptible": b.nonpreemptible,
                "volumes": {path: m.name for path, m in b.volumes.items()},
                "scaledown": config.settings.ollama_scaledown, "models": list(config.settings.ollama_model_list)},
    "image_env": app.settings_env,
    "gateway_secrets": g.secrets,
}))
"""


def deploy_env(**env: str) -> dict[str, str]:
    """A child's environment for importing app.py as `modal deploy` would; open on purpose
    (GATEWAY_ALLOW_OPEN) unless a test says otherwise, since most read only the wiring."""
    return env_with_path(None, **{"GATEWAY_ALLOW_OPEN": "1", **env})


def read_wiring(**env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", READ_WIRING], cwd=REPO, env=deploy_env(**env), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_default_wiring():
    wiring = read_wiring()
    assert wiring["app_name"] == "personal-model-garden"
    gateway, backend = wiring["gateway"], wiring["backend"]
    # The gateway: CPU only, always warm, many streams per container, a web server.
    assert gateway["gpus"] == [] and gateway["volumes"] == []
    assert gateway["min_containers"] == 1
    assert gateway["max_inputs"] == 1000
    assert gateway["web"] is True and gateway["unauthenticated"] is True
    assert gateway["timeout"] >= backend["timeout"]
    assert gateway["nonpreemptible"] is False  # preemptible: a third of the price (README)
    # The backend: the GPU, the models volume, concurrent inputs, no retries, not on the web.
    assert backend["gpus"] == [["A100-40GB", 1]]
    assert backend["timeout"] == 1800
    assert backend["startup_timeout"] == 3600  # pulling the models is not bound by a request's timeout
    assert backend["max_containers"] == 1
    assert backend["max_inputs"] == 8
    assert backend["volumes"] == {"/ollama-models": "ollama-models"}
    assert backend["retries"] is None
    assert backend["methods"] == ["proxy"]
    assert backend["web"] is False
    assert backend["nonpreemptible"] is False
    assert backend["scaledown"] == 300
    assert backend["models"] == ["glm-4.7-flash:q8_0", "glm-4.7-flash:q4_K_M"]
    assert wiring["image_env"] == {}


def test_overridden_wiring():
    wiring = read_wiring(
        OLLAMA_GPU="H100:2",
        OLLAMA_TIMEOUT="7200",
        OLLAMA_MAX_INPUTS="16",
        OLLAMA_SCALEDOWN="60",
        OLLAMA_STARTUP_TIMEOUT="7200",
        OLLAMA_MAX_CONTAINERS="3",
        OLLAMA_MODEL_LIST="qwen3:0.6b, llama3.2",
        GATEWAY_MIN_CONTAINERS="2",
        GATEWAY_MAX_INPUTS="250",
        GATEWAY_NONPREEMPTIBLE="true",
    )
    gateway, backend = wiring["gateway"], wiring["backend"]
    assert gateway["nonpreemptible"] is True and backend["nonpreemptible"] is False  # the gateway's only
    assert backend["gpus"] == [["H100", 2]]
    assert backend["timeout"] == 7200 and gateway["timeout"] >= 7200
    assert backend["max_inputs"] == 16
    assert backend["scaledown"] == 60
    assert backend["startup_timeout"] == 7200 and backend["max_containers"] == 3
    assert backend["models"] == ["qwen3:0.6b", "llama3.2"]
    assert gateway["max_inputs"] == 250 and gateway["min_containers"] == 2
    # The same choices are baked into the images, so containers read them too.
    assert wiring["image_env"]["OLLAMA_GPU"] == "H100:2"
    assert wiring["image_env"]["OLLAMA_MODEL_LIST"] == "qwen3:0.6b, llama3.2"


def test_keys_from_a_named_secret_and_proxy_auth():
    wiring = read_wiring(GATEWAY_API_KEYS_SECRET="garden-keys", GATEWAY_PROXY_AUTH="true")
    assert wiring["gateway_secrets"] == ["modal.Secret.from_name('garden-keys')"]
    assert wiring["gateway"]["unauthenticated"] is False  # Modal demands Modal-Key/Modal-Secret


def test_keys_from_the_deploy_environment_become_a_secret_not_image_env():
    wiring = read_wiring(GATEWAY_API_KEYS="sk-one,sk-two")
    assert wiring["gateway_secrets"] == ["Secret.from_dict([GATEWAY_API_KEYS])"]
    assert "GATEWAY_API_KEYS" not in wiring["image_env"]
    assert "sk-one" not in json.dumps(wiring)
    assert read_wiring()["gateway_secrets"] == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OLLAMA_GPU", "", "OLLAMA_GPU is empty"),
        ("OLLAMA_SCALEDOWN", "1", "OLLAMA_SCALEDOWN='1': expected a whole number from 2 to 3600"),
        ("OLLAMA_TIMEOUT", "abc", "OLLAMA_TIMEOUT='abc'"),
        ("OLLAMA_MODEL_LIST", "qwen3:8b@L4,qwen3:8b@H100", "OLLAMA_MODEL_LIST: 'qwen3:8b' is in two pools"),
        ("GATEWAY_NONPREEMPTIBLE", "always", "GATEWAY_NONPREEMPTIBLE='always': expected true or false"),
    ],
)
def test_a_bad_setting_fails_at_import_naming_the_variable(name, value, message):
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=REPO, env=deploy_env(**{name: value}), capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    # One line, as `modal deploy` shows it (Modal would print a traceback for an exception).
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert result.stderr.startswith("configuration error: ") and message in result.stderr


def test_local_files_resolve_from_app_py_not_from_the_deploy_folder(tmp_path):
    # Modal opens a requirements file when it builds the image, relative to the folder
    # `modal deploy` runs in; `modal deploy ~/garden/app.py` from elsewhere must work.
    script = f"""
import json, sys, modal
sys.path.insert(0, {str(REPO)!r})  # as `modal deploy <path>/app.py` does
seen = []
real = modal.Image.pip_install_from_requirements
def recording(self, requirements_txt, *args, **kwargs):
    seen.append(requirements_txt)
    return real(self, requirements_txt, *args, **kwargs)
modal.Image.pip_install_from_requirements = recording
import app
print(json.dumps(seen))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=deploy_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(paths) == 2  # the gateway's image and the backend's
    for path in paths:
        assert os.path.isabs(path) and os.path.samefile(path, REPO / "requirements.txt")


def test_warm_windows_are_a_scheduled_cpu_function_only_when_asked_for():
    script = """
import json, app
fn = getattr(app, "warm_windows", None)
info = fn.info() if fn else None
print(json.dumps(None if info is None else {"schedule": str(info.schedule), "gpus": info.gpus}))
"""
    def read(**env):
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=deploy_env(**env), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert read() is None  # no schedule, no function: the GPU scales to zero as before
    wired = read(OLLAMA_WARM_SCHEDULE="Mon-Fri 08:30-18:00 Europe/Berlin")
    assert wired == {"schedule": "Cron('*/5 * * * *', UTC)", "gpus": []}


def test_an_invalid_warm_schedule_fails_at_import_naming_the_variable():
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=REPO, env=deploy_env(OLLAMA_WARM_SCHEDULE="Mon-Fry 08:30-18:00"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "OLLAMA_WARM_SCHEDULE='Mon-Fry 08:30-18:00': 'Fry' is not a day" in result.stderr


READ_POOLS = """
import json, app
print(json.dumps({name: {"class": cls().proxy.info().method_names and type(cls).__name__ and name,
                         "gpus": cls().proxy.info().gpus, "volumes": sorted(cls().proxy.info().volumes),
                         "timeout": cls().proxy.info().timeout, "max_inputs": cls().proxy.info().concurrency_info.max_inputs}
                  for name, cls in app.backend_classes.items()}
                 | {"classes": sorted(n for n in dir(app) if n.startswith("OllamaBackend"))}))
"""


def read_pools(**env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", READ_POOLS], cwd=REPO, env=deploy_env(**env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_pools_deploy_two_gpu_classes_sharing_the_volume():
    pools = read_pools(OLLAMA_MODEL_LIST="qwen3:8b@L4,glm-4.7-flash:q8_0@A100-80GB", OLLAMA_GPU="L4")
    assert pools["classes"] == ["OllamaBackend", "OllamaBackend_A100_80GB"]
    assert pools["default"]["gpus"] == [["L4", 1]] and pools["a100-80gb"]["gpus"] == [["A100-80GB", 1]]
    assert pools["default"]["volumes"] == pools["a100-80gb"]["volumes"] == ["/ollama-models"]
    assert pools["default"]["timeout"] == pools["a100-80gb"]["timeout"] == 1800


def test_the_default_configuration_deploys_one_pool_as_before():
    pools = read_pools()
    assert pools["classes"] == ["OllamaBackend"] and list(pools) == ["default", "classes"]
    assert pools["default"]["gpus"] == [["A100-40GB", 1]]


def test_a_key_policy_travels_with_the_keys_in_the_secret_never_in_the_image():
    policy = '{"partner": {"models": ["llama3.2"], "max_streams": 1}}'
    wiring = read_wiring(GATEWAY_API_KEYS="partner:sk-one", GATEWAY_KEY_POLICY=policy)
    assert wiring["gateway_secrets"] == ["Secret.from_dict([GATEWAY_API_KEYS, GATEWAY_KEY_POLICY])"]
    assert "GATEWAY_KEY_POLICY" not in wiring["image_env"] and "sk-one" not in json.dumps(wiring)


def test_each_pools_class_pulls_and_preloads_only_its_own_models():
    # Runs each class's own start-up hook (Modal's @enter) with the Ollama process and the
    # service replaced by recorders: what would each container pull and preload?
    script = """
import json, app
import backend.ollama_server, backend.service
from modal._utils.async_utils import synchronizer
started = {}
class Recorder:
    def __init__(self, base_url, models, **kwargs):
        self.models = models
    def start(self):
        started[self.pool] = list(self.models)
backend.ollama_server.OllamaServer = lambda *args, **kwargs: None
backend.service.OllamaService = Recorder
start = synchronizer._translate_in(app.GardenBackend.__dict__["start"]).raw_f
for cls in app.GardenBackend.__subclasses__():
    Recorder.pool = cls.__name__
    start(cls.__new__(cls))
print(json.dumps(started))
"""
    env = deploy_env(OLLAMA_MODEL_LIST="qwen3:8b@L4,glm-4.7-flash:q8_0@A100-80GB,llama3.2,phi4@L4")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "OllamaBackend": ["llama3.2"], "OllamaBackend_L4": ["qwen3:8b", "phi4"], "OllamaBackend_A100_80GB": ["glm-4.7-flash:q8_0"],
    }  # fmt: skip


def test_a_key_policy_beside_a_named_secret_is_refused_at_deploy():
    result = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=REPO,
        env=deploy_env(GATEWAY_API_KEYS_SECRET="garden-keys", GATEWAY_KEY_POLICY='{"*": {"max_streams": 1}}'),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "put the policy in that secret" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("configuration error: GATEWAY_KEY_POLICY")


def test_a_policy_without_keys_still_reaches_the_gateway():
    # Budgets and limits with proxy auth (or an open garden): the policy is not left behind.
    wiring = read_wiring(GATEWAY_PROXY_AUTH="true", GATEWAY_KEY_POLICY='{"*": {"usd_per_day": 5}}')
    assert wiring["gateway_secrets"] == ["Secret.from_dict([GATEWAY_KEY_POLICY])"]


def test_warm_windows_warm_every_pool_that_has_models():
    script = """
import json, app, backend.warm
calls = []
backend.warm.apply_schedule = lambda schedule, instance, now, lead: calls.append(instance)
app.backend_classes = {name: (lambda name=name: name) for name in app.backend_classes}  # instances, by pool
app.warm_windows.local()
print(json.dumps(sorted(calls)))
"""
    env = deploy_env(OLLAMA_MODEL_LIST="qwen3:8b@L4,glm-4.7-flash:q8_0@A100-80GB", OLLAMA_WARM_SCHEDULE="Mon-Fri 08:30-18:00 Europe/Berlin")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["a100-80gb", "l4"]  # not the default pool: it has no models


# --- Safe by default: `modal deploy` imports app.py on the deployer's machine first ------------

CREATED = """
import modal, sys
created = []
real_app = modal.App.__init__
def recording(self, *args, **kwargs):
    created.append("App")
    return real_app(self, *args, **kwargs)
modal.App.__init__ = recording
try:
    import app
finally:
    print("created:", created, file=sys.stderr)
"""


def import_app(script: str = CREATED, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env_with_path(None, **env), capture_output=True, text=True, timeout=120)


def test_an_open_deploy_is_refused_in_one_line_before_anything_is_created():
    result = import_app()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == [
        "created: []",  # not even the modal.App
        "error: refusing to deploy an open gateway (anyone could run your GPUs): set GATEWAY_API_KEYS_SECRET to a Modal Secret "
        "holding GATEWAY_API_KEYS, or set GATEWAY_API_KEYS, or GATEWAY_PROXY_AUTH=true; GATEWAY_ALLOW_OPEN=1 deploys it open on purpose",
    ]


@pytest.mark.parametrize(
    "env",
    [{"GATEWAY_API_KEYS": "me:sk-1"}, {"GATEWAY_API_KEYS_SECRET": "garden-keys"}, {"GATEWAY_PROXY_AUTH": "true"}, {"GATEWAY_ALLOW_OPEN": "1"}],
)
def test_keys_a_key_secret_proxy_auth_or_an_explicit_yes_let_a_deploy_through(env):
    result = import_app(**env)
    assert result.returncode == 0, result.stderr
    assert "created: ['App']" in result.stderr


def test_inside_a_container_the_check_does_not_run():
    # In a Modal container `modal.is_local()` is False: the keys come from the Secret
    # mounted there, and app.py is imported to serve, never refused.
    script = "import modal, modal._runtime.execution_context as ctx\nmodal.is_local = lambda: False\nimport app\nprint('served')"
    result = import_app(script)
    assert result.returncode == 0 and "served" in result.stdout, result.stderr
    assert "this deploy runs" not in result.stderr  # nor is the summary printed there


def test_a_deploy_says_what_it_runs_key_names_never_keys_and_what_it_costs():
    result = import_app(
        GATEWAY_API_KEYS="me:sk-secret-1,partner:sk-secret-2", OLLAMA_GPU="L4",
        OLLAMA_MODEL_LIST="llama3.2,glm-4.7-flash:q8_0@A100-80GB", OLLAMA_WARM_SCHEDULE="Mon-Fri 08:30-18:00 Europe/Berlin",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "  pool default: L4 ($0.80 per GPU hour): llama3.2" in result.stderr
    assert "  pool a100-80gb: A100-80GB ($2.50 per GPU hour): glm-4.7-flash:q8_0" in result.stderr
    assert "  keys: me, partner" in result.stderr and "sk-secret" not in result.stderr + result.stdout
    assert "  warm: Mon-Fri 08:30-18:00 Europe/Berlin (47.5 h a week" in result.stderr
    assert "GPUs scale to zero after 300 s idle" in result.stderr and "idle cost: $" in result.stderr


def test_a_deploy_reads_the_settings_file_and_the_environment_wins(tmp_path):
    settings = tmp_path / "garden.env"
    settings.write_text("GATEWAY_API_KEYS_SECRET=garden-keys\nOLLAMA_GPU=L4\nOLLAMA_MODEL_LIST=llama3.2\nOLLAMA_SCALEDOWN=60\n")
    result = subprocess.run(
        [sys.executable, "-c", READ_WIRING], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=env_with_path(None, GARDEN_SETTINGS_FILE=str(settings), OLLAMA_SCALEDOWN="120"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # protected by the file's key secret
    wiring = json.loads(result.stdout.strip().splitlines()[-1])
    assert wiring["backend"]["gpus"] == [["L4", 1]] and wiring["backend"]["models"] == ["llama3.2"]
    assert wiring["backend"]["scaledown"] == 120
    assert wiring["gateway_secrets"] == ["modal.Secret.from_name('garden-keys')"]
    # The containers are given the same settings, so they build the same garden.
    assert wiring["image_env"] == {"GATEWAY_API_KEYS_SECRET": "garden-keys", "OLLAMA_GPU": "L4", "OLLAMA_MODEL_LIST": "llama3.2", "OLLAMA_SCALEDOWN": "120"}
